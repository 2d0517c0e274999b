"""Shared task for the paper's classification-style sets (VSR, SNLI-VE, CIFAR-10, CIFAR-100, MNIST).

Input: a released MixLoRA evaluation JSONL (``common.released_examples``); scoring:
``mixlora.scoring.classification.score_classification`` (option letters, normalised equality, then a whole-word
single-label match; docs/eval_scoring.md). The label set for the whole-word rule is, unless ``labels`` is
given, every distinct target label of the *whole* file, so a ``limit`` run scores answers against the same
labels as a full run; ``metrics.json`` records the set (pass it to the CLI scorer with ``--labels`` when
re-scoring a limited run).

The five sets differ only in their name, which is also their MMAvg set (``CLASSIFICATION_SETS``): each
``configs/task/<set>.yaml`` instantiates ``ClassificationTask`` with ``name`` and ``mmavg_set`` set to it. The
former per-set paths (``mixlora.tasks.cifar10.build`` and the like) stay importable: ``set_builder`` makes their
``build`` functions and ``mixlora.tasks`` registers them as small alias modules.

Input: the released MixLoRA evaluation JSONL, one record per line ``{"unique_id", "prompt", "target",
"image_path"}`` (docs/benchmarks.md#released-evaluation-files); the synthetic suite writes the same format to
``data/synthetic/eval/<set>/test.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from mixlora.scoring import ScoringError
from mixlora.scoring.aggregate import MMAVG_SETS
from mixlora.scoring.classification import MATCHING, normalize_label, score_classification, split_target

from .common import SHORT_ANSWER, TaskError, check_limit, check_prompts, first_per_group, released_examples


# The paper's five classification-style zero-shot sets (each one of MMAvg's seven) and what a record asks.
CLASSIFICATION_SETS: dict[str, str] = {
    "vsr": "VSR (Visual Spatial Reasoning, cambridgeltl/vsr_zeroshot): does a caption's spatial relation between "
           "two objects hold? True or False",
    "snli_ve": "SNLI-VE: a Flickr30k premise image and a text hypothesis; entailment, neutral or contradiction",
    "cifar10": "CIFAR-10 as a VQA task: name the object class (10 classes)",
    "cifar100": "CIFAR-100 as a VQA task: name the object class (100 classes)",
    "mnist": "MNIST as a VQA task: name the handwritten digit (0-9)",
}


class ClassificationTask:
    """Accuracy on a released-format JSONL of one question per image.

    Args:
        name: output folder / metrics key (e.g. "vsr").
        path: the JSONL file (``unique_id``, ``prompt``, ``target``, ``image_path``).
        image_root: folder that relative ``image_path`` values are resolved against (default: the file's folder).
        prompt_suffix / strip_suffix: see ``common.build_question`` (``prompts="task"`` only).
        max_new_tokens: default generation length.
        matching: "standard" | "exact" (``mixlora.scoring.classification``).
        labels: label set for whole-word matching; None = the distinct targets of the file.
        mmavg_set: which MMAvg set this is (one of ``MMAVG_SETS``), or None to keep it out of MMAvg.
    """

    def __init__(self, name: str, path: str, image_root: Optional[str] = None, prompt_suffix: str = SHORT_ANSWER,
                 strip_suffix: str = "", max_new_tokens: int = 16, matching: str = "standard",
                 labels: Optional[Sequence[str]] = None, mmavg_set: Optional[str] = None):
        if matching not in MATCHING:
            raise TaskError(f"{name}: matching={matching!r} is not a valid option; choose one of {MATCHING}")
        if mmavg_set is not None and mmavg_set not in MMAVG_SETS:
            raise TaskError(f"{name}: mmavg_set={mmavg_set!r} is not one of {MMAVG_SETS} (or null)")
        self.name, self.path, self.image_root = name, path, image_root
        self.prompt_suffix, self.strip_suffix = prompt_suffix, strip_suffix
        self.max_new_tokens = int(max_new_tokens)
        self.matching = matching
        self.labels = list(labels) if labels is not None else None
        self.mmavg_set = mmavg_set
        self._file_labels: Optional[list[str]] = None

    def examples(self, limit: Optional[int] = None, prompts: str = "task"):
        check_prompts(prompts)
        examples = released_examples(self.path, self.name, self.prompt_suffix, self.strip_suffix, prompts,
                                     image_root=self.image_root)
        self._file_labels = sorted({normalize_label(split_target(e.record["target"])[1]) for e in examples} - {""})
        return first_per_group(examples, check_limit(limit))

    def label_set(self, records: list[dict]) -> list[str]:
        if self.labels is not None:
            return self.labels
        if self._file_labels is not None:
            return self._file_labels
        return sorted({normalize_label(split_target(r["target"])[1]) for r in records} - {""})

    def score(self, records: list[dict], out_dir: Path) -> dict:
        try:
            return score_classification(records, task=self.name, labels=self.label_set(records),
                                        matching=self.matching)
        except ScoringError as err:
            raise TaskError(str(err)) from None

    def headline(self, scores: dict) -> dict[str, float]:
        return {"accuracy": scores["accuracy"]}

    def settings(self) -> dict:
        return {"path": str(self.path), "image_root": self.image_root, "prompt_suffix": self.prompt_suffix,
                "strip_suffix": self.strip_suffix}


def set_builder(set_name: str) -> Callable[..., ClassificationTask]:
    """The ``build(path, name=set_name, ...)`` function of one of ``CLASSIFICATION_SETS``.

    It is what the former module ``mixlora.tasks.<set_name>`` held: a ``ClassificationTask`` whose output name
    defaults to ``set_name`` and whose MMAvg set is always ``set_name``; other arguments as ``ClassificationTask``.
    """
    if set_name not in CLASSIFICATION_SETS:
        raise TaskError(f"{set_name!r} is not a classification set; choose one of {sorted(CLASSIFICATION_SETS)}")

    def build(path: str, name: str = set_name, image_root: Optional[str] = None, prompt_suffix: str = SHORT_ANSWER,
              strip_suffix: str = "", max_new_tokens: int = 16, matching: str = "standard",
              labels: Optional[Sequence[str]] = None) -> ClassificationTask:
        return ClassificationTask(name, path, image_root=image_root, prompt_suffix=prompt_suffix,
                                  strip_suffix=strip_suffix, max_new_tokens=max_new_tokens, matching=matching,
                                  labels=labels, mmavg_set=set_name)

    build.__name__ = build.__qualname__ = "build"
    build.__module__ = f"mixlora.tasks.{set_name}"
    build.__doc__ = f"The {set_name} task ({CLASSIFICATION_SETS[set_name]}); arguments as ``ClassificationTask``."
    return build
