"""The testbed recipe, shared by the demo and the full table: data -> stage-1 base -> stage-2 rows -> evaluation.

Every run goes through the same entry points as ``python train.py`` (``mixlora.train.run`` on a composed
config) and the same library evaluation as ``eval.py`` (``mixlora.build.load_run`` + ``mixlora.tasks.evaluate``), in
this process, so the per-run cost is the training and generation themselves, not interpreter start-up.

Layout of OUT::

    OUT/base/                          stage 1: the whole tiny LLM + projector trained on the captions
    OUT/runs/<row>_s<seed>/            a joint or full row: a run directory (train.py layout) + eval/
    OUT/runs/<row>_s<seed>/<task>/     a specialist row: one run directory per task
    OUT/runs/.../testbed.json          what was run: row, seed, overrides, train and eval wall times
    OUT/results.json, results.md, plots/   the report (mixlora.testbed.report)

Resumable: training uses ``resume=true`` (a finished run is not retrained; a stopped one continues from its
checkpoint), and a run whose ``eval/metrics.json`` exists is not evaluated again.

One config tree per table: :func:`run_table` copies the shipped Hydra configs once, when it starts, and composes
every run of that invocation from the copy, so editing ``configs/`` of the checkout while a long table runs does
not change (or break) the runs still to come. A later invocation (a resume) takes a new copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from .rows import Row

logger = logging.getLogger(__name__)

SPLITS = ("seen", "unseen")
RECORD = "testbed.json"
# vicuna_v1's roles without its system prompt: a constant prefix would double the sequence length here.
TEMPLATE = "vicuna_v1_nosys"
IMAGE_POOL = 2


@dataclass(frozen=True)
class Budget:
    """Sizes of one table: steps, batches, learning rates and how many test instances per task are scored.

    stage2_steps is the joint run's length; a specialist trains ``stage2_steps // tasks`` steps on its one task,
    i.e. on as many examples of that task as the joint run sees of it. ``batch_size`` is stage 2's batch,
    ``stage1_batch_size`` the base's.
    """

    stage1_steps: int = 1000
    stage2_steps: int = 300
    batch_size: int = 32
    stage1_batch_size: int = 32
    stage1_lr: float = 3e-3
    adapter_lr: float = 5e-3
    full_lr: float = 3e-4     # measured on full_ft at batch 32: 49.0 % seen at 3e-4 against 41.9 % at 1e-3
    eval_per_task: Optional[int] = None   # None: every test instance (300 per task and split by default)
    eval_batch_size: int = 100
    max_new_tokens: int = 4   # the longest answer ("bottom right") is two tokens and EOS


# The table: 750 steps at batch 128 (96k examples) on 3,000 training records per task, full fine-tuning at lr 1e-3,
# the budget at which the ceiling row passes 85 % (full fine-tuning 93.3 / 93.2 / 86.4 % seen over three seeds,
# results/mini/ceiling.md; at 250 steps, the budget of the 20-row table in results/mini/mini_table.md, it reached
# 56.3 %). Only the length changed: adapter rows keep lr 5e-3 (round 1's adapter rate; one rate for every adapter
# row, so no row is tuned).
TABLE = Budget(stage2_steps=750, batch_size=128, full_lr=1e-3)
# The testbed build each command uses (mixlora.data.testbed.make_testbed arguments; the rest are its defaults).
TABLE_DATA: dict = {"train_images": 8000, "train_per_task": 3000}
DEMO_DATA: dict = {}
# The demo's reduced sizes (shorter stages, 100 test instances per task and split), chosen for its time budget.
DEMO = Budget(stage1_steps=500, stage2_steps=200, eval_per_task=100)


def build_tasks(data: Path) -> list[str]:
    """The task names of the testbed in ``data`` (its manifest), or of the default task set if it is not built yet."""
    from mixlora.data.testbed.families import select_tasks
    from mixlora.data.testbed.writer import read_manifest

    manifest = read_manifest(data)
    names = (manifest.get("arguments", {}).get("tasks") if manifest is not None else None)
    return [task.task_name for task in select_tasks(names)]


def data_overrides(data: Path) -> list[str]:
    """What every testbed run shares: its data, 2x2 pooling (16 image tokens), the feature cache, no wandb."""
    return [f"data.image_folder={data / 'images'}", "data.generate=null", "data.max_length=128",
            f"data.template={TEMPLATE}",
            # A run reads each training image once per epoch (the table's 8,000 images at 64 px: 375 MiB); kept
            # in memory after the first read, each is decoded once per run.
            "data.image_memory_mb=512",
            f"model.image_pool={IMAGE_POOL}", f"model.feature_cache={data / 'feature_cache'}", "logger=disabled",
            "trainer.progress=lines", "trainer.log_every=100", "resume=true", "trainer.keep_checkpoints=1"]


def template_corpus(out: Path, copies: int = 200) -> Path:
    """``OUT/template_corpus.json``: the chat template's fixed text (role tags, and a system prompt if the template
    has one) as training records, so the local BPE learns it as a pretrained tokenizer knows English."""
    from mixlora.checkpoint import atomic_write
    from mixlora.data.templates import get_template

    chat = get_template(TEMPLATE)
    user, assistant = chat.roles
    record = {"id": "template", "task_name": "template",
              "conversations": [{"from": "human", "value": f"{chat.system} {user}: hello{chat.sep}".strip()},
                                {"from": "gpt", "value": f"{assistant}: hello"}]}
    path = out / "template_corpus.json"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps([record] * copies)))
    return path


def stage1_overrides(out: Path, data: Path, budget: Budget) -> list[str]:
    corpus = template_corpus(out)
    return [*data_overrides(data), f"output_dir={out / 'base'}", "adapter=none", "model.train_llm=true",
            f"data.annotations={data / 'stage1.json'}",
            f"model.tokenizer.corpus=[{data / 'stage1.json'},{data / 'train.json'},{corpus}]",
            f"trainer.schedule_steps={budget.stage1_steps}", f"trainer.save_every={max(budget.stage1_steps // 3, 1)}",
            f"trainer.micro_batch_size={budget.stage1_batch_size}",
            f"trainer.global_batch_size={budget.stage1_batch_size}", f"trainer.optimizer.lr={budget.stage1_lr}", "seed=0"]


def stage2_overrides(row: Row, seed: int, out: Path, data: Path, budget: Budget, run_dir: Path,
                     task: Optional[str] = None, n_tasks: int = 1) -> list[str]:
    base = out / "base"
    steps = budget.stage2_steps if task is None else max(budget.stage2_steps // n_tasks, 1)
    lr = (budget.full_lr if row.kind == "full" else budget.adapter_lr) * row.lr_scale
    overrides = [*data_overrides(data), f"output_dir={run_dir}", f"data.annotations={data / 'train.json'}",
                 f"model.init_checkpoint={base / 'model.safetensors'}", "model.tokenizer.kind=pretrained",
                 f"model.tokenizer.path={base / 'tokenizer'}", f"trainer.schedule_steps={steps}",
                 f"trainer.save_every={max(steps // 2, 1)}", f"trainer.micro_batch_size={budget.batch_size}",
                 f"trainer.global_batch_size={budget.batch_size}", f"trainer.optimizer.lr={lr}", f"seed={seed}",
                 *row.overrides]
    if row.kind != "full":
        # Adapter dropout off in every adapter row: on CPU its random mask over each layer's input cost ~30 % of
        # a step here, and seeds still vary initialisation and data order.
        overrides.append("adapter.dropout=0.0")
    if task is not None:
        overrides.append(f"data.tasks=['{task}']")
    return overrides


def train(overrides: list[str], config_dir: Optional[Path] = None) -> dict:
    """``python train.py OVERRIDES`` in this process, composed from ``config_dir`` (default: the shipped config
    tree); returns its summary."""
    from mixlora.train import compose_config, run

    return run(compose_config(overrides, config_dir=config_dir))


def test_tasks(data: Path) -> dict:
    """{split: SeenTask} for the testbed's seen-phrasing and unseen-phrasing test files."""
    from mixlora.tasks.seen import SeenTask

    return {split: SeenTask(str(data / "eval" / split / "test.jsonl"), name=split, max_new_tokens=4)
            for split in SPLITS}


def evaluate_run(run_dir: Path, data: Path, budget: Budget, task: Optional[str] = None) -> dict:
    """Score ``run_dir`` on both splits (only ``task``'s records for a specialist); writes ``run_dir/eval/``."""
    from mixlora.build import load_run
    from mixlora.tasks.evaluate import evaluate, load_examples

    metrics = run_dir / "eval" / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    tasks = test_tasks(data)
    decoding = {"template": TEMPLATE, "do_sample": False, "max_new_tokens": budget.max_new_tokens}
    examples = load_examples(tasks, budget.eval_per_task, decoding)
    if task is not None:
        examples = {split: [e for e in rows if e.group == task] for split, rows in examples.items()}
    stack, _ = load_run(run_dir)
    try:
        return evaluate(stack, tasks, run_dir, decoding, batch_size=budget.eval_batch_size,
                        limit=budget.eval_per_task, overwrite=True, progress="none", examples=examples,
                        source={"run": str(run_dir)})
    finally:
        if stack.model.feature_cache is not None:
            stack.model.feature_cache.flush()


def run_dirs(row: Row, seed: int, out: Path, tasks: list[str]) -> list[tuple[Path, Optional[str]]]:
    """[(run directory, task or None)] of one row and seed."""
    folder = out / "runs" / f"{row.name}_s{seed}"
    if row.kind == "specialist":
        return [(folder / task.split("+")[-1], task) for task in tasks]
    return [(folder, None)]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 2)


def run_row(row: Row, seed: int, out: Path, data: Path, budget: Budget, tasks: list[str],
            say: Callable[[str], None] = print, config_dir: Optional[Path] = None) -> None:
    """Train and evaluate one row and seed (every task of a specialist row); finished parts are skipped."""
    for run_dir, task in run_dirs(row, seed, out, tasks):
        record_path = run_dir / RECORD
        if record_path.is_file() and (run_dir / "eval" / "metrics.json").is_file():
            continue
        overrides = stage2_overrides(row, seed, out, data, budget, run_dir, task, len(tasks))
        train_s = _timed(lambda: train(overrides, config_dir))
        eval_s = _timed(lambda: evaluate_run(run_dir, data, budget, task))
        record = {"row": row.name, "seed": seed, "task": task, "overrides": overrides, "budget": asdict(budget),
                  "train_s": train_s, "eval_s": eval_s}
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        say(f"    {run_dir.relative_to(out)}: train {train_s:.0f} s, eval {eval_s:.0f} s")


def run_stage1(out: Path, data: Path, budget: Budget, say: Callable[[str], None] = print,
               config_dir: Optional[Path] = None) -> dict:
    summary = train(stage1_overrides(out, data, budget), config_dir)
    say(f"    base: loss {summary.get('loss_last', float('nan')):.3f}")
    return summary


def seeds_for(row: Row, demo: bool, demo_seeds: int = 2) -> list[int]:
    """A row's default seeds: its own count in the table; in the demo, ``demo_seeds`` for joint rows and one for
    the ceiling (full) and the specialists."""
    if demo:
        return list(range(demo_seeds if row.kind == "joint" else 1))
    return list(range(row.seeds))


def run_table(out: Path, data: Path, plan: list[tuple[Row, int]], budget: Budget, tasks: list[str],
              keep_going: bool = False, say: Callable[[str], None] = print,
              config_source: Optional[Path] = None, workers: int = 1) -> list[str]:
    """Stage 1 (once per OUT), then every (row, seed) of ``plan``; returns the failures (empty unless
    ``keep_going``, which logs a failed run and goes on). Every run is composed from a copy of
    ``config_source`` (default: the shipped config tree) taken here, before the first run.

    ``workers`` > 1 runs the (row, seed) pairs in that many worker processes, each with an equal share of this
    process's torch threads (at least one): on a CPU, small models use cores better as independent runs than as
    threads of one run. Stage 1 runs first, here, with every thread. Runs are independent (own run directories;
    the feature cache takes concurrent writers), so the results are those of a sequential table.
    """
    from mixlora.package_data import config_dir

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with tempfile.TemporaryDirectory(prefix="mixlora-testbed-configs-") as tmp:
        snapshot = Path(shutil.copytree(config_source or config_dir(), Path(tmp) / "configs"))
        say(f"2/4 stage 1: base model ({budget.stage1_steps} steps)")
        run_stage1(out, data, budget, say=say, config_dir=snapshot)
        if workers == 1:
            return _run_plan(out, data, plan, budget, tasks, keep_going, say, snapshot)
        return _run_plan_parallel(out, data, plan, budget, tasks, keep_going, say, snapshot, workers)


def _run_plan(out, data, plan, budget, tasks, keep_going, say, config_dir: Path) -> list[str]:
    failed = []
    for n, (row, seed) in enumerate(plan, 1):
        say(f"3/4 [{n}/{len(plan)}] {row.name} seed {seed}")
        try:
            run_row(row, seed, out, data, budget, tasks, say=say, config_dir=config_dir)
        except Exception as err:  # noqa: BLE001 - re-raised unless keep_going; then reported by the caller
            if not keep_going:
                raise
            failed.append(_failure(row, seed, err))
            say(f"    FAILED ({failed[-1]}); --keep-going: next run")
    return failed


def _failure(row: Row, seed: int, err: BaseException) -> str:
    """How a failed (row, seed) is reported, in the returned list and the log line."""
    return f"{row.name} seed {seed}: {type(err).__name__}: {err}"


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def worker_log(out: Path, row: Row, seed: int) -> Path:
    """Where a worker process writes the output of one (row, seed): ``OUT/runs/<row>_s<seed>.log``."""
    return out / "runs" / f"{row.name}_s{seed}.log"


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C-level writes too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _worker_run(row: Row, seed: int, out: Path, data: Path, budget: Budget, tasks: list[str],
                config_dir: Path) -> list[str]:
    """One (row, seed) in a worker process, its output in :func:`worker_log`; returns what it would have said
    (the parent prints it), so parallel runs do not interleave their progress lines."""
    lines: list[str] = []
    with _output_to(worker_log(out, row, seed)):
        run_row(row, seed, out, data, budget, tasks, say=lines.append, config_dir=config_dir)
    return lines


def _run_plan_parallel(out, data, plan, budget, tasks, keep_going, say, config_dir: Path, workers: int) -> list[str]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    say(f"3/4 {len(plan)} runs in {workers} worker processes, {threads} thread(s) each; the output of each run "
        f"goes to {out / 'runs'}/<row>_s<seed>.log")
    failed = []
    # spawn, not fork: the parent holds torch's thread pools and, after stage 1, open files
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_worker_run, row, seed, out, data, budget, tasks, config_dir): (row, seed)
                   for row, seed in plan}
        try:
            for done, future in enumerate(as_completed(futures), 1):
                row, seed = futures[future]
                err = future.exception()
                if err is None:
                    say(f"3/4 [{done}/{len(plan)} done] {row.name} seed {seed}")
                    for line in future.result():
                        say(line)
                    continue
                if not keep_going:
                    raise err
                failed.append(f"{_failure(row, seed, err)} (log: {worker_log(out, row, seed)})")
                say(f"3/4 [{done}/{len(plan)} done] FAILED ({failed[-1]}); --keep-going: next run")
        except BaseException:
            for future in futures:  # runs not started yet are dropped; the ones running finish and are kept
                future.cancel()
            raise
    return failed
