"""VSR (Visual Spatial Reasoning, ``cambridgeltl/vsr_zeroshot``): binary accuracy.

A caption states a spatial relation between two objects; the label is True or False. One of the paper's seven
zero-shot sets (it counts towards MMAvg as ``vsr``).

Input: the released MixLoRA evaluation JSONL, one record per line ``{"unique_id", "prompt", "target",
"image_path"}`` (docs/benchmarks.md#released-evaluation-files); the synthetic suite writes the same format to
``data/synthetic/eval/vsr/test.jsonl``. Scoring: ``mixlora.eval.classification`` (the option letter when the
prompt lists "Options: (a) ...", else normalised equality, else a whole-word single-label match).
"""

from __future__ import annotations

from typing import Optional, Sequence

from .classification import ClassificationTask
from .common import SHORT_ANSWER


def build(path: str, name: str = "vsr", image_root: Optional[str] = None, prompt_suffix: str = SHORT_ANSWER,
          strip_suffix: str = "", max_new_tokens: int = 16, matching: str = "standard",
          labels: Optional[Sequence[str]] = None) -> ClassificationTask:
    """The vsr task; arguments as ``ClassificationTask``."""
    return ClassificationTask(name, path, image_root=image_root, prompt_suffix=prompt_suffix,
                              strip_suffix=strip_suffix, max_new_tokens=max_new_tokens, matching=matching,
                              labels=labels, mmavg_set="vsr")
