"""Seen-task evaluation set for the synthetic suite (the analogue of the paper's Table 2).

Table 2 scores models on *held-out instances of training tasks* (ScienceQA, COCO, FairFace, ... are Vision-Flan
training tasks). This writes the same for the synthetic suite: ``per_task`` fresh instances of each of the 28
training tasks, drawn from a random stream of their own (``"{seed}/seen/{task}"``, disjoint from the training
stream ``"{seed}/{task}"``), with the training phrasings and answer formats, in the released MixLoRA JSONL format
plus ``task_name``::

    DIR/eval/seen/test.jsonl   {"unique_id": "seen-00000", "task_name": "SynthShapes+color_classification",
                                "prompt": "Which color ...?\\nOptions: (a) yellow ...", "target": "(c) purple",
                                "image_path": "images/00000.png"}
    DIR/eval/seen/images/*.png

The prompt is the training instruction without the trailing ``\\n<image>`` (evaluation puts the image first,
as LLaVA's preprocessing does for training). Scored by ``mixlora.tasks.seen.SeenTask``.

    python -m mixlora.data.seen --suite data/synthetic [--seed 0] [--per-task 30]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from mixlora.data.synthetic import TRAIN_TASKS, _rng, _save, _write_jsonl, lettered, render

SEEN_DIR = "eval/seen"


def write_seen(suite: str | Path, seed: int = 0, image_size: int = 64, per_task: int = 30,
               overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``suite/eval/seen/`` (see the module docstring); returns a manifest entry.

    Args:
        suite: the synthetic suite's folder (``data/synthetic``).
        seed: the suite's seed (the seen stream is derived from it, never equal to the training stream).
        image_size: must match the suite's (64 by default).
        per_task: instances per training task (round-robin over the task's phrasings).
        overwrite: replace an existing ``eval/seen``; otherwise an existing one is an error.
    """
    if not isinstance(per_task, int) or per_task < 1:
        raise ValueError(f"per_task must be a positive integer, got {per_task!r}")
    root = Path(suite) / SEEN_DIR
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to regenerate it")
        shutil.rmtree(root)
    rows = []
    with tqdm(total=len(TRAIN_TASKS) * per_task, desc="seen tasks", disable=not progress) as bar:
        for task in TRAIN_TASKS:
            rng = _rng(seed, f"seen/{task.name}")
            for n in range(per_task):
                sample = task.sample(rng, image_size)
                instruction = task.phrasings[n % len(task.phrasings)].format(**sample.fields)
                i = len(rows)
                row = {"unique_id": f"seen-{i:05d}", "task_name": task.name,
                       "prompt": instruction + (f"\nOptions: {lettered(sample.options)}" if sample.options else ""),
                       "target": sample.answer, "image_path": f"images/{i:05d}.png"}
                _save(render(sample.scene), root / row["image_path"])
                rows.append(row)
                bar.update(1)
    _write_jsonl(root / "test.jsonl", rows)
    return {"path": f"{SEEN_DIR}/test.jsonl", "records": len(rows), "tasks": len(TRAIN_TASKS), "per_task": per_task,
            "stream": f"{seed}/seen/<task>"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", required=True, help="the synthetic suite folder (e.g. data/synthetic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--per-task", type=int, default=30)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        info = write_seen(a.suite, a.seed, a.image_size, a.per_task, a.overwrite, progress=not a.quiet)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(a.suite) / info['path']} ({info['records']} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
