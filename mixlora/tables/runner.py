"""Run one paper table here: train every selected row, evaluate it, aggregate the table.

For every selected row, in the table's order:

1. train:  ``TORCHRUN --standalone --nproc_per_node N -m mixlora.train.cli experiment=ROW output_dir=OUT/ROW
   resume=true [train overrides] [the row's own]`` (``mixlora.train.cli`` is what ``train.py`` runs), or one
   plain ``PY -m mixlora.train.cli ...`` process when the train overrides hold
   ``trainer=single`` (the single-process trainer refuses multi-process launches). A row whose OUT/ROW/run.json
   says ``finished`` is not trained again; any other run there is continued (``resume=true``), so a stopped table
   is simply run again, and tables sharing one OUT share the rows they have in common.
2. eval:   ``PY -m mixlora.tasks.cli run=OUT/ROW device=DEVICE [the table's eval overrides] [eval overrides]``
   (what ``eval.py`` runs; it resumes its own predictions).
3. once, at the end: ``PY -m mixlora.tables.aggregate OUT/ROW ... --out RESULTS`` (Table 2:
   ``mixlora.tables.aggregate_table2``)
   over the rows that worked.

Every command is a package entry point (``python -m ...``), not a checkout's script, and runs in the directory the
runner was started from (as ``train.py`` would), so relative paths inside overrides are relative to it; run tables
from the repository root to use its default data folders (``data/...``).
:mod:`mixlora.tables.submit` runs the same commands as submitit jobs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .rows import SEEN_TASKS, Row, Table

# The package's entry points (train.py and eval.py of a checkout run these): ``-m`` works for python and torchrun.
TRAIN = ("-m", "mixlora.train.cli")
EVAL = ("-m", "mixlora.tasks.cli")
# Every process of a table run works offline: the checkpoints are local paths, and a hub lookup would only stall.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
SEEN_RECORD = '{"unique_id", "prompt", "target", "image_path"}'


class TableError(Exception):
    """Bad input to a table run; the command line prints it and exits with status 2."""


def cuda_visible() -> bool:
    """Whether ``nvidia-smi -L`` lists a GPU (without importing torch: the runner itself never needs it)."""
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def parse_seen_tasks(entries: list[str], source: str = "--seen-tasks") -> dict[str, list[str]]:
    """{key: [pattern, ...]} from ``KEY=PATTERN[,PATTERN...]`` entries (several per string, space-separated)."""
    out: dict[str, list[str]] = {}
    for entry in (e for text in entries for e in text.split()):
        key, sep, patterns = entry.partition("=")
        if not sep or not patterns or not key:
            raise TableError(f"{source} entry '{entry}' is not KEY=PATTERN[,PATTERN...]")
        if key not in SEEN_TASKS:
            raise TableError(f"{source} key '{key}' is not a seen task; keys: {' '.join(SEEN_TASKS)}")
        if "'" in patterns:
            raise TableError(f"{source} pattern '{patterns}' contains a quote")
        out[key] = [p for p in patterns.split(",") if p]
    return out


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run whose run.json says it finished (train.py would then do nothing)."""
    path = run_dir / "run.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "finished"
    except (json.JSONDecodeError, AttributeError) as err:
        # Not for the runner to judge: train.py says what is wrong with the folder when it is started on it.
        print(f"note: {path} is not a run.json ({err}); training {run_dir.name}", flush=True)
        return False


@dataclass
class TableRun:
    """Everything one run of a table needs; the commands it prints and runs are methods of it."""

    table: Table
    out: Path
    rows: list[Row]
    results: Path
    train_overrides: list[str] = field(default_factory=list)
    eval_overrides: list[str] = field(default_factory=list)
    nproc: int = 4
    python: str = sys.executable
    torchrun: list[str] | None = None  # default: PY -m torch.distributed.run
    eval_device: str = "cpu"
    seen_eval: Path | None = None  # Table 2: the folder of the seen tasks' held-out files
    seen_tasks: dict[str, list[str]] = field(default_factory=dict)  # Table 2: specialists' task patterns
    task_definitions: Path | None = None  # the task-routed rows' data.task_definitions
    labels: dict[str, str] = field(default_factory=dict)  # option -> how the user named it (for messages)

    def label(self, name: str) -> str:
        return self.labels.get(name, f"--{name.replace('_', '-')}")

    def check(self) -> None:
        """Refuse, before anything runs, what would fail later (TableError)."""
        if self.nproc < 1:
            raise TableError(f"{self.label('nproc')} must be a positive integer, got {self.nproc}")
        if not self.table.seen:
            return
        if self.seen_eval is None:
            names = ", ".join(f"{key}.jsonl" for key in SEEN_TASKS)
            raise TableError(f"{self.label('seen_eval')} is not set: point it at a folder with {names} (held-out "
                             "instances of the seen tasks in the released evaluation format; docs/reproduce.md)")
        needed = sorted({key for row in self.rows for key in self.seen_keys(row)})
        for key in needed:
            if not (self.seen_eval / f"{key}.jsonl").is_file():
                raise TableError(f"{self.label('seen_eval')}={self.seen_eval} has no {key}.jsonl (held-out {key} "
                                 f"instances, one {SEEN_RECORD} per line)")

    # ------------------------------------------------------------------------------------------- commands
    def single(self) -> bool:
        return "trainer=single" in self.train_overrides

    def run_dir(self, row: Row) -> Path:
        return self.out / row.name

    def finished(self, row: Row) -> bool:
        return finished(self.run_dir(row))

    def seen_keys(self, row: Row) -> list[str]:
        """Table 2: the seen tasks a row is scored on (a specialist: its own; a multi-task row: all six)."""
        return [row.seen] if row.seen is not None else list(SEEN_TASKS)

    def train_command(self, row: Row) -> list[str]:
        if self.single():
            launch = [self.python, *TRAIN]
        else:
            torchrun = self.torchrun or [self.python, "-m", "torch.distributed.run"]
            launch = [*torchrun, "--standalone", "--nproc_per_node", str(self.nproc), *TRAIN]
        own = []
        if row.routing == "task" and self.task_definitions is not None:
            own.append(f"data.task_definitions={self.task_definitions}")
        if self.table.seen and row.seen in self.seen_tasks:
            # Each pattern quoted for Hydra: '+', '*' and '[' are override syntax otherwise.
            own.append("data.tasks=[" + ",".join(f"'{p}'" for p in self.seen_tasks[row.seen]) + "]")
        return [*launch, f"experiment={row.name}", f"output_dir={self.run_dir(row)}", "resume=true",
                *self.train_overrides, *own]

    def eval_command(self, row: Row) -> list[str]:
        own = []
        if self.table.seen:
            keys = self.seen_keys(row)
            for key in keys:
                own += [f"+task.seen_{key}._target_=mixlora.tasks.classification.ClassificationTask",
                        f"+task.seen_{key}.path={self.seen_eval / f'{key}.jsonl'}",
                        f"+task.seen_{key}.prompt_suffix=''"]
            # Beside, not over, a Table 1 evaluation of the same run in OUT/ROW/eval/.
            own += ["tasks=[" + ",".join(f"seen_{key}" for key in keys) + "]", f"output_dir={self.run_dir(row)}/seen"]
        return [self.python, *EVAL, f"run={self.run_dir(row)}", f"device={self.eval_device}", *own,
                *self.eval_overrides]

    def aggregate_command(self, rows: list[Row]) -> list[str]:
        return [self.python, "-m", self.table.aggregate, *[str(self.run_dir(r)) for r in rows], "--out",
                str(self.results)]

    def environment(self) -> dict[str, str]:
        return environment()


def environment() -> dict[str, str]:
    """This process's environment, offline (:data:`OFFLINE`): what every command of a table run gets."""
    return {**os.environ, **OFFLINE}


def show(tag: str, command: list[str]) -> None:
    """Print a command shell-quoted (it can be pasted), flushed before a child process writes."""
    print(f"{tag}: {shlex.join(command)}", flush=True)


def execute(command: list[str], env: dict[str, str]) -> int:
    """Run a command in this directory; its exit status (128 + N when killed by signal N, as a shell)."""
    code = subprocess.run(command, env=env).returncode
    return code if code >= 0 else 128 - code


def finish(run: TableRun, done: list[Row], failed: list[str], dry_run: bool) -> int:
    """Aggregate the rows that worked, then say which failed; 0 when none did, else 1."""
    if done:
        command = run.aggregate_command(done)
        show("aggregate", command)
        if not dry_run:
            code = execute(command, run.environment())
            if code:
                print(f"aggregate failed (exit status {code})", file=sys.stderr)
                return code
    if failed:
        print(f"{run.table.key}: {len(failed)} row(s) failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def run_here(run: TableRun, dry_run: bool = False, keep_going: bool = False) -> int:
    """Train and evaluate every row in this process's machine, one after another; see the module docstring."""
    env = run.environment()
    done: list[Row] = []
    failed: list[str] = []
    for row in run.rows:
        code = 0
        if run.finished(row):
            print(f"[{row.name}] train: skipped, {run.run_dir(row)} holds a finished run", flush=True)
        else:
            show(f"[{row.name}] train", run.train_command(row))
            code = 0 if dry_run else execute(run.train_command(row), env)
        if code == 0:
            show(f"[{row.name}] eval", run.eval_command(row))
            code = 0 if dry_run else execute(run.eval_command(row), env)
        if code == 0:
            done.append(row)
            continue
        print(f"[{row.name}] failed (exit status {code})", file=sys.stderr, flush=True)
        if not keep_going:
            return code
        failed.append(row.name)
    return finish(run, done, failed, dry_run)
