"""Calibrate the interference testbed: train one row (full fine-tuning by default) from a stage-1 base and score it.

The testbed is judged by its power, never by how MixLoRA does, so calibration runs train the ceiling row
(``full_ft``) under a candidate recipe and report per-task seen / unseen accuracy. Each run appends one JSON line
to ``--log`` (default ``OUT/calibration.jsonl``) with the exact arguments, the overrides and the wall times.

    python -m mixlora.data.testbed --out /tmp/tb --train-images 8000 --train-per-task 3000
    python scripts/testbed_calibrate.py full_b128 --data /tmp/tb --out /tmp/tb_cal --stage1 1000 --steps 250

``--stage1 N`` trains the base (``OUT/base``) first if it is not there; later runs in the same OUT reuse it.
Runs go to ``OUT/runs/<name>_s<seed>/`` through the testbed recipe (``mixlora.testbed.recipe``), so a calibration
run is the same train/eval path as a table row.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from mixlora.testbed import recipe
from mixlora.testbed.rows import BY_NAME


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="run name (folder OUT/runs/<name>_s<seed>)")
    p.add_argument("--data", type=Path, required=True, help="a testbed build (python -m mixlora.data.testbed)")
    p.add_argument("--out", type=Path, required=True, help="folder of the base and the runs")
    p.add_argument("--row", default="full_ft", choices=sorted(BY_NAME), help="testbed row (default full_ft)")
    p.add_argument("--tasks", default=None, help="comma-separated task names to train and score (default: the build's)")
    p.add_argument("--steps", type=int, default=250, help="stage-2 steps")
    p.add_argument("--batch", type=int, default=128, help="stage-2 batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="stage-2 learning rate")
    p.add_argument("--pool", type=int, default=recipe.IMAGE_POOL, help="image-token pooling (both stages)")
    p.add_argument("--eval-per-task", type=int, default=100, help="test instances per task and split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stage1", type=int, default=0, help="train the base first (if absent) for this many steps")
    p.add_argument("--stage1-batch", type=int, default=32)
    p.add_argument("--stage1-lr", type=float, default=3e-3)
    p.add_argument("--log", type=Path, default=None, help="JSONL to append the result to (default OUT/calibration.jsonl)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the stage-2 run")
    a = p.parse_args(argv)
    if a.name.count("/") or min(a.steps, a.batch, a.eval_per_task, a.pool) < 1:
        p.error("name must be a plain folder name, and steps, batch, eval-per-task and pool must be >= 1")

    recipe.IMAGE_POOL = a.pool
    data, out = a.data.resolve(), a.out.resolve()
    if a.stage1 and not (out / "base" / "model.safetensors").is_file():
        b1 = recipe.Budget(stage1_steps=a.stage1, stage1_batch_size=a.stage1_batch, stage1_lr=a.stage1_lr)
        start = time.perf_counter()
        recipe.run_stage1(out, data, b1)
        print(f"stage 1: {a.stage1} steps in {time.perf_counter() - start:.0f} s", flush=True)
    if not (out / "base" / "model.safetensors").is_file():
        p.error(f"no stage-1 base in {out / 'base'}; pass --stage1 N to train one")

    tasks = [f"testbed+{t}" for t in a.tasks.split(",")] if a.tasks else recipe.build_tasks(data)
    extra = list(a.overrides)
    if a.tasks:
        extra.append("data.tasks=[" + ",".join(f"'{t}'" for t in tasks) + "]")
    row = BY_NAME[a.row]
    row = replace(row, name=a.name, overrides=tuple(row.overrides) + tuple(extra))
    budget = recipe.Budget(stage2_steps=a.steps, batch_size=a.batch, full_lr=a.lr, adapter_lr=a.lr,
                           eval_per_task=a.eval_per_task)
    recipe.run_row(row, a.seed, out, data, budget, tasks)

    run_dir = out / "runs" / f"{a.name}_s{a.seed}"
    record = json.loads((run_dir / recipe.RECORD).read_text())
    result = {"name": a.name, "command": "python scripts/testbed_calibrate.py " + shlex.join(argv or sys.argv[1:]),
              "row": a.row, "steps": a.steps, "batch": a.batch, "lr": a.lr, "pool": a.pool, "seed": a.seed,
              "data": str(data), "train_s": record["train_s"], "eval_s": record["eval_s"]}
    for split in recipe.SPLITS:
        per_task = json.loads((run_dir / "eval" / split / "metrics.json").read_text())["scores"]["per_task"]
        accuracy = {t.split("+")[1]: per_task[t]["accuracy"] for t in tasks}
        result[split] = round(sum(accuracy.values()) / len(accuracy), 1)
        result[f"{split}_tasks"] = accuracy
    print(json.dumps(result), flush=True)
    log = a.log or out / "calibration.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
