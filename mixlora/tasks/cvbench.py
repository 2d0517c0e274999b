"""CV-Bench (Cambrian-1): 2D Count/Relation and 3D Depth/Distance multiple-choice questions.

Input (``path``): a JSONL of CV-Bench records, or a folder holding one:

- ``DIR/cvbench.jsonl``, written by ``data/prepare_cvbench.py`` (fields of the release plus an absolute
  ``image_path``);
- the release folder itself with ``test_2d.jsonl`` + ``test_3d.jsonl`` (or the older ``test.jsonl``), images at
  ``DIR/<filename>`` (``img/2D/count/...``); parquet-only downloads need ``data/prepare_cvbench.py`` first;
- the synthetic suite's ``eval/cvbench/test.jsonl`` (same fields, images relative to its folder).

Record fields used: ``idx``, ``type`` (2D/3D), ``task``, ``source``, ``prompt`` (question + lettered choices),
``answer`` ("(B)"), ``choices``; every field is kept in the predictions. Prompt: ``prompt`` + "\\nAnswer with
the option's letter from the given choices directly." (LLaVA-1.5's multiple-choice instruction).
Scoring: ``mixlora.scoring.cvbench.score_cvbench`` (first "(X)", else a leading capital letter; accuracy per source,
per task; official overall = (mean(ADE20K, COCO) + Omni3D) / 2). ``limit`` is per CV-Bench task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mixlora.scoring import ScoringError, locate
from mixlora.scoring.cvbench import ANSWER_PARSING, TYPES, parse_answer_field, score_cvbench

from .common import (OPTION_LETTER, Example, TaskError, build_question, check_limit, check_prompts, check_unique,
                     first_per_group, read_records, require_file, resolve_image, string_field)

RELEASE_FILES = (("cvbench.jsonl",), ("test_2d.jsonl", "test_3d.jsonl"), ("test.jsonl",))


def find_files(path: Path, task: str) -> list[Path]:
    """The JSONL file(s) of a CV-Bench path (a file, or a folder in one of the layouts above)."""
    if path.is_file():
        return [path]
    for names in RELEASE_FILES:
        files = [path / n for n in names if (path / n).is_file()]
        if files:
            return files
    if any(path.glob("*.parquet")):
        hint = (f"it holds parquet files: run `python data/prepare_cvbench.py --src {path} --out data/cvbench` and "
                f"set task.{task}.path=data/cvbench")
    else:
        hint = "expected cvbench.jsonl, test_2d.jsonl + test_3d.jsonl, or test.jsonl"
    raise TaskError(f"{task}: no CV-Bench JSONL in {path}; {hint}")


class CVBenchTask:
    """See the module docstring. ``answer_parsing``: "letter" (default) or "letter_or_choice"."""

    mmavg_set = None  # CV-Bench is our addition, not one of the paper's sets

    def __init__(self, path: str, name: str = "cvbench", prompt_suffix: str = OPTION_LETTER, strip_suffix: str = "",
                 answer_parsing: str = "letter", max_new_tokens: int = 16):
        if answer_parsing not in ANSWER_PARSING:
            raise TaskError(f"{name}: answer_parsing={answer_parsing!r} is not a valid option; choose one of "
                            f"{ANSWER_PARSING}")
        self.name, self.path = name, path
        self.prompt_suffix, self.strip_suffix, self.answer_parsing = prompt_suffix, strip_suffix, answer_parsing
        self.max_new_tokens = int(max_new_tokens)

    def _record_image(self, records, i: int, root: Path) -> Path:
        record = records[i]
        for name in ("image_path", "filename", "image"):
            if isinstance(record.get(name), str) and record[name]:
                return resolve_image(records, i, name, root, self.name)
        raise TaskError(f"{self.name}: {locate(records, i)}: no image field (image_path, filename or image).")

    def examples(self, limit: Optional[int] = None, prompts: str = "task") -> list[Example]:
        check_prompts(prompts)
        path = require_file(self.path, self.name, "CV-Bench path", "cvbench.jsonl from data/prepare_cvbench.py, "
                            "the CV-Bench folder, or data/synthetic/eval/cvbench/test.jsonl")
        examples, where = [], []
        for file in find_files(path, self.name):
            records = read_records(file, self.name)
            for i, record in enumerate(records):
                for name in ("type", "task", "source", "prompt", "answer"):
                    string_field(records, i, name, self.name, "CV-Bench fields: idx, type, task, source, prompt, "
                                 "answer, choices, filename or image_path")
                if record["type"] not in TYPES:
                    raise TaskError(f"{self.name}: {locate(records, i)}: type {record['type']!r} is not 2D or 3D.")
                letter = parse_answer_field(record["answer"])
                if letter is None:
                    raise TaskError(f"{self.name}: {locate(records, i)}: answer {record['answer']!r} is not of the "
                                    "form '(X)'.")
                # Checked here as well as by the scorer, so a bad record fails before generation, not after it.
                choices = record.get("choices")
                if choices is not None and not isinstance(choices, list):
                    raise TaskError(f"{self.name}: {locate(records, i)}: 'choices' must be a list, got "
                                    f"{type(choices).__name__}.")
                if choices is not None and ord(letter) - ord("A") >= len(choices):
                    raise TaskError(f"{self.name}: {locate(records, i)}: answer {record['answer']!r} points past "
                                    f"the {len(choices)} choices; fix the record's answer or choices.")
                if "idx" not in record:
                    raise TaskError(f"{self.name}: {locate(records, i)}: field 'idx' is missing.")
                image = self._record_image(records, i, file.parent)
                out = dict(record)
                out["image_path"] = str(image)
                examples.append(Example(uid=f"{record['type']}/{record['idx']}", image=image, record=out,
                                        group=record["task"],
                                        question=build_question(record["prompt"], self.strip_suffix,
                                                                self.prompt_suffix, prompts=prompts)))
                where.append(locate(records, i))
        check_unique(examples, self.name, lambda k: where[k])
        return first_per_group(examples, check_limit(limit))

    def score(self, records: list[dict], out_dir: Path) -> dict:
        try:
            return score_cvbench(records, answer_parsing=self.answer_parsing)
        except ScoringError as err:
            raise TaskError(str(err)) from None

    def headline(self, scores: dict) -> dict[str, float]:
        return {"overall": scores["overall"], "accuracy_2d": scores["accuracy_2d"],
                "accuracy_3d": scores["accuracy_3d"]}

    def settings(self) -> dict:
        return {"path": str(self.path), "prompt_suffix": self.prompt_suffix, "strip_suffix": self.strip_suffix}
