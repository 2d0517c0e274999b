"""TextVQA: questions about text in the image; VQA accuracy (one of the paper's seven zero-shot sets).

Input: the released MixLoRA JSONL ``{"unique_id", "prompt", "target", "image_path"}``, optionally with
``answers`` (the 10 annotator answers; the synthetic suite writes them). Scoring:
``mixlora.scoring.textvqa.score_textvqa``: the standard VQA normalisation, then min(#matching annotators / 3, 1)
averaged over the 10 leave-one-out subsets when ``answers`` is present, exact match with ``target`` otherwise.
Default prompt suffix: LLaVA-1.5's "Answer the question using a single word or phrase." (its TextVQA script).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mixlora.scoring import ScoringError
from mixlora.scoring.textvqa import score_textvqa

from .common import SHORT_ANSWER, TaskError, check_limit, first_per_group, released_examples


class TextVQATask:
    """See the module docstring. ``path``: the JSONL file; ``image_root``: folder for relative image paths."""

    mmavg_set = "textvqa"

    def __init__(self, path: str, name: str = "textvqa", image_root: Optional[str] = None,
                 prompt_suffix: str = SHORT_ANSWER, strip_suffix: str = "", max_new_tokens: int = 16):
        self.name, self.path, self.image_root = name, path, image_root
        self.prompt_suffix, self.strip_suffix = prompt_suffix, strip_suffix
        self.max_new_tokens = int(max_new_tokens)

    def examples(self, limit: Optional[int] = None, prompts: str = "task"):
        examples = released_examples(self.path, self.name, self.prompt_suffix, self.strip_suffix, prompts,
                                     image_root=self.image_root)
        return first_per_group(examples, check_limit(limit))

    def score(self, records: list[dict], out_dir: Path) -> dict:
        try:
            return score_textvqa(records)
        except ScoringError as err:
            raise TaskError(str(err)) from None

    def headline(self, scores: dict) -> dict[str, float]:
        return {"accuracy": scores["accuracy"]}

    def settings(self) -> dict:
        return {"path": str(self.path), "image_root": self.image_root, "prompt_suffix": self.prompt_suffix,
                "strip_suffix": self.strip_suffix}
