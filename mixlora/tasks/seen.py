"""Seen tasks: held-out instances of the training tasks, per-task accuracy and their average (paper Table 2).

Input: a released-format JSONL with a ``task_name`` per record (``mixlora.data.seen`` writes one for the synthetic
suite). Each record is scored by ``mixlora.scoring.classification.match_prediction`` (option letter, normalised
equality, whole-word single-label match) with the label set of *its own task* (the distinct targets of that
task), so a colour answer is never matched against shape labels. Result::

    {"average": mean over tasks of the task accuracy (Table 2's AVG), "accuracy": over all records,
     "per_task": {task_name: {"accuracy", "correct", "count"}}}

Asked as trained: no prompt suffix by default (Vision-Flan instructions already state the answer format).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from mixlora.scoring import ScoringError
from mixlora.scoring.classification import normalize_label, score_classification, split_target

from .common import TaskError, check_limit, first_per_group, released_examples


class SeenTask:
    """See the module docstring. ``path``: the JSONL; ``image_root``: folder for relative image paths."""

    mmavg_set = None

    def __init__(self, path: str, name: str = "seen", image_root: Optional[str] = None, prompt_suffix: str = "",
                 max_new_tokens: int = 24):
        self.name, self.path, self.image_root = name, path, image_root
        self.prompt_suffix = prompt_suffix
        self.max_new_tokens = int(max_new_tokens)

    def examples(self, limit: Optional[int] = None, prompts: str = "task"):
        examples = released_examples(self.path, self.name, self.prompt_suffix, "", prompts,
                                     image_root=self.image_root)
        for e in examples:
            task = e.record.get("task_name")
            if not isinstance(task, str) or not task:
                raise TaskError(f"{self.name}: record {e.uid} has no 'task_name'; a seen-task file names the "
                                "training task of every record (python -m mixlora.data.seen writes one)")
            e.group = task
        return first_per_group(examples, check_limit(limit))

    def score(self, records: list[dict], out_dir: Path) -> dict:
        by_task: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            by_task[r["task_name"]].append(r)
        per_task = {}
        try:
            for task, rows in sorted(by_task.items()):
                labels = sorted({normalize_label(split_target(r["target"])[1]) for r in rows} - {""})
                s = score_classification(rows, task=task, labels=labels)
                per_task[task] = {"accuracy": s["accuracy"], "correct": s["correct"], "count": s["count"]}
        except ScoringError as err:
            raise TaskError(str(err)) from None
        correct = sum(v["correct"] for v in per_task.values())
        return {"task": self.name, "average": sum(v["accuracy"] for v in per_task.values()) / len(per_task),
                "accuracy": 100.0 * correct / len(records), "count": len(records), "per_task": per_task}

    def headline(self, scores: dict) -> dict[str, float]:
        return {"average": scores["average"]}

    def settings(self) -> dict:
        return {"path": str(self.path), "image_root": self.image_root, "prompt_suffix": self.prompt_suffix}
