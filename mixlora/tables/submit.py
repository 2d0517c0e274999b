"""Run a table's rows as submitit jobs: one job per row (train if not finished, then evaluate), locally
(``submitit_local``: real processes started from pickled jobs, side by side on this machine) or on SLURM
(``slurm``), then aggregate here once every job has ended.

A job runs exactly the commands :mod:`mixlora.tables.runner` prints, torchrun included, as one SLURM task that
holds the row's GPUs. Settings come from the Hydra sweep's launcher files, configs/hydra/launcher/local.yaml and
slurm.yaml (timeout, partition, account, memory, requeues, ...), with two changes: one task per job (the job starts
its own torchrun; the sweep starts one task per GPU instead) and, on SLURM, ``gpus_per_node`` = the run's
processes, ``cpus_per_task`` = the file's CPUs per GPU times that. ``--launcher-arg KEY=VALUE`` sets any key
(submitit's names, as in those files). Jobs log to OUT/.submitit/<job id>/.

A job that hits its time limit or is preempted is requeued (up to ``max_num_timeout`` times) and starts again:
the training continues from its last checkpoint (``resume=true``), a finished run is not trained again, and
eval.py resumes its predictions.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from mixlora.train.config import shipped_config_dir

from .runner import TableError, TableRun, environment, finish, finished, show

LAUNCHERS = ("submitit_local", "slurm")
LAUNCHER_FILES = {"submitit_local": "local", "slurm": "slurm"}
# submitit's cluster-independent parameters (the rest are prefixed by the cluster's name, as the Hydra plugin does).
GENERIC = {"timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node", "name",
           "stderr_to_stdout"}
INIT = {"max_num_timeout"}


def launcher_settings(launcher: str, gpus: int, extra: dict[str, Any]) -> dict[str, Any]:
    """submitit parameters of one row's job: configs/hydra/launcher/<file>.yaml, then one task per job holding
    ``gpus`` GPUs (SLURM), then ``extra`` (``--launcher-arg``) verbatim."""
    path = shipped_config_dir() / "hydra" / "launcher" / f"{LAUNCHER_FILES[launcher]}.yaml"
    settings = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
    if launcher == "slurm":
        per_gpu = settings.get("cpus_per_task")
        settings.update(gpus_per_node=gpus, cpus_per_task=per_gpu * gpus if per_gpu else None)
    settings.update(tasks_per_node=1, nodes=1)
    settings.update(extra)
    if settings.get("nodes") != 1 or settings.get("tasks_per_node") != 1:
        raise TableError("a row's job is one task on one node (it starts torchrun itself): nodes and tasks_per_node "
                         f"must be 1, got {settings.get('nodes')} and {settings.get('tasks_per_node')}")
    return {k: v for k, v in settings.items() if v is not None}


def parse_launcher_args(entries: list[str]) -> dict[str, Any]:
    """{key: value} from ``KEY=VALUE`` entries, each value read as YAML (``30`` an int, ``[a, b]`` a list)."""
    out = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key.isidentifier():
            raise TableError(f"--launcher-arg '{entry}' is not KEY=VALUE (keys as in configs/hydra/launcher/*.yaml)")
        out[key] = yaml.safe_load(value) if value else None
    return out


def make_executor(launcher: str, folder: Path, settings: dict[str, Any]):
    """A submitit AutoExecutor for ``launcher`` with ``settings`` (TableError for a parameter it does not know)."""
    try:
        import submitit
    except ImportError as err:
        raise TableError("--launcher needs submitit (requirements.txt): pip install submitit==1.5.4") from err
    cluster = "local" if launcher == "submitit_local" else "slurm"
    init = {f"{cluster}_{k}": v for k, v in settings.items() if k in INIT}
    params = {(k if k in GENERIC else f"{cluster}_{k}"): v for k, v in settings.items() if k not in INIT}
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
        executor.update_parameters(**params)
    except (NameError, ValueError, TypeError, AssertionError, RuntimeError) as err:  # RuntimeError: no srun
        raise TableError(f"--launcher {launcher}: submitit refused the settings {params}: {err}") from err
    return executor


class RowJob:
    """The callable a job runs: train the row unless its run has finished, then evaluate it.

    It decides at run time, not at submission, so a requeued job that had finished training only evaluates.
    Submitit requeues a job on timeout or preemption when its callable has a ``checkpoint`` method; this one
    resubmits itself unchanged (``resume=true`` does the rest)."""

    def __init__(self, name: str, run_dir: Path, train: list[str], evaluate: list[str], cwd: str | None = None):
        self.name, self.run_dir, self.train, self.evaluate = name, run_dir, train, evaluate
        # The directory the table was submitted from: relative paths in the overrides mean the same in the job.
        self.cwd = cwd or os.getcwd()

    def __call__(self) -> dict[str, Any]:
        env = environment()
        trained = not finished(self.run_dir)
        if trained:
            print(f"[{self.name}] train: {shlex.join(self.train)}", flush=True)
            subprocess.run(self.train, cwd=self.cwd, env=env, check=True)
        print(f"[{self.name}] eval: {shlex.join(self.evaluate)}", flush=True)
        subprocess.run(self.evaluate, cwd=self.cwd, env=env, check=True)
        return {"row": self.name, "trained": trained}

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def run_submitted(run: TableRun, launcher: str, extra: dict[str, Any], dry_run: bool = False,
                  keep_going: bool = False) -> int:
    """Submit one job per row, wait for all, aggregate the rows whose job ended well."""
    gpus = 1 if run.single() else run.nproc
    settings = launcher_settings(launcher, gpus, {"name": f"mixlora_{run.table.key}", **extra})
    folder = run.out / ".submitit" / "%j"
    for row in run.rows:
        if run.finished(row):
            print(f"[{row.name}] train: skipped, {run.run_dir(row)} holds a finished run", flush=True)
        else:
            show(f"[{row.name}] train", run.train_command(row))
        show(f"[{row.name}] eval", run.eval_command(row))
    print(f"submit: {len(run.rows)} job(s) through {launcher} ({', '.join(f'{k}={v}' for k, v in settings.items())}),"
          f" logs in {folder.parent}/", flush=True)
    if dry_run:
        return finish(run, list(run.rows), [], dry_run=True)
    executor = make_executor(launcher, folder, settings)
    jobs = []
    with executor.batch():
        for row in run.rows:
            jobs.append(executor.submit(RowJob(row.name, run.run_dir(row), run.train_command(row),
                                               run.eval_command(row))))
    for row, job in zip(run.rows, jobs):
        print(f"[{row.name}] submitted: job {job.job_id}", flush=True)
    from submitit.core.utils import UncompletedJobError

    done, failed = [], []
    for index, (row, job) in enumerate(zip(run.rows, jobs)):
        try:
            error = job.exception()  # waits for the job; the error its callable raised, if any
        except UncompletedJobError as err:  # killed, or out of requeues, before it returned
            error = err
        if error is None:
            print(f"[{row.name}] job {job.job_id} done", flush=True)
            done.append(row)
            continue
        print(f"[{row.name}] job {job.job_id} failed; its log: {job.paths.stderr}\n{_tail(error)}", file=sys.stderr,
              flush=True)
        failed.append(row.name)
        if not keep_going:
            for other in jobs[index + 1:]:
                other.cancel(check=False)
            print(f"{run.table.key}: stopped at the first failed row (--keep-going: let the others finish); "
                  f"cancelled {len(jobs) - index - 1} job(s)", file=sys.stderr)
            return 1
    return finish(run, done, failed, dry_run=False)


def _tail(error: BaseException, lines: int = 20) -> str:
    text = str(error).rstrip().splitlines()
    return "\n".join(text[-lines:])
