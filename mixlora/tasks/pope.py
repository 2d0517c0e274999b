"""POPE: "Is there a <object> in the image?" yes/no probes of object hallucination, three splits.

Input: one released-format JSONL per split ``{"unique_id", "prompt", "target": "yes"|"no", "image_path"}``
(MixLoRA's pope_rand / pope_pop / pope_adv files; the synthetic suite's ``eval/pope/{random,popular,
adversarial}.jsonl``). ``splits`` maps a split name to its file; each prediction record gets ``split``.
Scoring: ``mixlora.scoring.pope.score_pope``: LLaVA's ``eval_pope.py`` parsing (first sentence, a "no"/"not" word
means no, else yes); accuracy, precision, recall, F1 and yes-ratio (from the predictions) per split and their
mean. MMAvg takes the mean F1 unless the eval config's ``pope_metric`` says accuracy. ``limit`` is per split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from mixlora.scoring import ScoringError
from mixlora.scoring.pope import score_pope

from .common import SHORT_ANSWER, TaskError, check_limit, first_per_group, jsonable, released_examples


class POPETask:
    """See the module docstring. ``splits``: {split name: JSONL path}; ``image_root``: for relative image paths."""

    mmavg_set = "pope"

    def __init__(self, splits: Mapping[str, str], name: str = "pope", image_root: Optional[str] = None,
                 prompt_suffix: str = SHORT_ANSWER, strip_suffix: str = "", max_new_tokens: int = 16):
        splits = jsonable(splits)
        if not isinstance(splits, dict) or not splits:
            raise TaskError(f"{name}: splits must map split names to JSONL files, e.g. {{random: "
                            f".../random.jsonl}}; got {splits!r}")
        self.name, self.splits, self.image_root = name, {str(k): v for k, v in splits.items()}, image_root
        self.prompt_suffix, self.strip_suffix = prompt_suffix, strip_suffix
        self.max_new_tokens = int(max_new_tokens)

    def examples(self, limit: Optional[int] = None, prompts: str = "task"):
        limit = check_limit(limit)
        examples = []
        for split, path in self.splits.items():
            examples += released_examples(path, self.name, self.prompt_suffix, self.strip_suffix, prompts,
                                          image_root=self.image_root, group=split, extra={"split": split})
        for ex in examples:
            if ex.record["target"].strip().lower() not in ("yes", "no"):
                raise TaskError(f"{self.name}: example {ex.uid!r} has target {ex.record['target']!r}; POPE targets "
                                "are 'yes' or 'no'. Fix the file.")
        return first_per_group(examples, limit)

    def score(self, records: list[dict], out_dir: Path) -> dict:
        try:
            return score_pope(records)
        except ScoringError as err:
            raise TaskError(str(err)) from None

    def headline(self, scores: dict) -> dict[str, float]:
        mean = scores["mean"]
        return {"f1": mean["f1"], "accuracy": mean["accuracy"], "yes_ratio": mean["yes_ratio"]}

    def settings(self) -> dict:
        return {"splits": self.splits, "image_root": self.image_root, "prompt_suffix": self.prompt_suffix,
                "strip_suffix": self.strip_suffix}
