"""MME: 14 yes/no subtasks, two questions per image, scored with the official eval_tool rules.

Input (``path``), either layout:

- the prepared folder written by ``data/prepare_mme.py`` (from the release folder or the lmms-lab parquet)::

      DIR/<subtask>.jsonl   {"question_id": "<subtask>/<image>", "category", "image", "image_path",
                             "question": "... Please answer yes or no.", "answer": "Yes"|"No"}

- the raw release folder ``MME_Benchmark_release_version/<subtask>/`` (flat ``<stem>.png|jpg`` + ``<stem>.txt``,
  or ``images/`` + ``questions_answers_YN/``); it is read with ``mixlora.tasks.prepare_mme``, the reader behind
  ``data/prepare_mme.py``, so both routes give the same records. The synthetic suite's ``eval/mme`` uses this layout (scene nested).

Prompt: the question with " Please answer yes or no." replaced by "\\nAnswer the question using a single word
or phrase." (LLaVA-1.5 and lmms-eval); ``prompts="as_is"`` keeps the question untouched.
Scoring: the predictions are written in the official layout ``eval_tool/<subtask>.txt`` (lines
``image<TAB>question<TAB>Yes|No<TAB>prediction``, an image's two questions consecutive; the original question
text, as the official tool expects) and scored from those files with ``mixlora.scoring.mme.score_results_dir``, so
``python -m mixlora.scoring.score mme eval/mme/eval_tool`` prints the same numbers. ``limit`` keeps the first
ceil(limit / 2) images of each subtask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from mixlora.scoring import ScoringError, locate
from mixlora.scoring.mme import OFFICIAL_SUBTASKS, PARSERS, score_results_dir, write_results_dir

from .common import (SHORT_ANSWER, Example, TaskError, build_question, check_limit, check_prompts, check_unique,
                     read_records, require_file, resolve_image, string_field)

PLEASE_ANSWER = " Please answer yes or no."
EVAL_TOOL_DIR = "eval_tool"
PREPARED_FORMAT = "data/prepare_mme.py format: question_id, category, image, image_path, question, answer"
_RECORD_FIELDS = ("question_id", "category", "image", "image_path", "question", "answer")


def _prepare_mme():
    """``mixlora.tasks.prepare_mme``, the reader behind ``data/prepare_mme.py`` (imported on first use: it needs tqdm)."""
    from . import prepare_mme

    return prepare_mme


def read_release(src: Path) -> dict[str, list[dict]]:
    """{subtask: prepared-format records} from a raw release folder; any unusable image is an error."""
    problems: list[str] = []
    subtasks = _prepare_mme().from_release(src, problems)
    if problems:
        listed = "\n  ".join(problems[:5])
        raise TaskError(f"mme: {len(problems)} problem(s) in {src}:\n  {listed}\nFix them, or run `python "
                        f"data/prepare_mme.py --src {src} --out data/mme` (it leaves such images out and reports "
                        "them) and set task.mme.path=data/mme.")
    return {name: records for name, records in subtasks.items() if records}


def read_prepared(folder: Path) -> dict[str, list[dict]]:
    """{subtask: records} from ``folder/<subtask>.jsonl`` files (image paths checked)."""
    out = {}
    order = {name: k for k, name in enumerate(OFFICIAL_SUBTASKS)}  # official order, as the release reader gives
    for file in sorted(folder.glob("*.jsonl"), key=lambda f: (order.get(f.stem, len(order)), f.stem)):
        records = read_records(file, "mme")
        for i, record in enumerate(records):
            for name in ("question_id", "category", "image", "question", "answer"):
                string_field(records, i, name, "mme", PREPARED_FORMAT)
            if record["category"] != file.stem:
                raise TaskError(f"mme: {locate(records, i)}: category {record['category']!r} differs from the file "
                                f"name {file.name!r}; each subtask lives in <subtask>.jsonl.")
            if record["answer"] not in ("Yes", "No"):
                raise TaskError(f"mme: {locate(records, i)}: answer {record['answer']!r} must be 'Yes' or 'No'.")
            record["image_path"] = str(resolve_image(records, i, "image_path", folder, "mme"))
        out[file.stem] = list(records)
    return out


def _pairs(records: list[dict], subtask: str) -> list[list[dict]]:
    """Group consecutive questions by image; the official tool reads exactly two per image, in a row."""
    pairs: list[list[dict]] = []
    for record in records:
        if pairs and pairs[-1][0]["image"] == record["image"] and len(pairs[-1]) < 2:
            pairs[-1].append(record)
        else:
            pairs.append([record])
    bad = [p[0]["image"] for p in pairs if len(p) != 2]
    if bad:
        raise TaskError(f"mme: subtask {subtask!r}: image(s) {bad[:5]} do not have exactly two consecutive "
                        "questions; prepare the folder with data/prepare_mme.py (it keeps pairs together).")
    return pairs


class MMETask:
    """See the module docstring.

    Args:
        path: prepared folder or raw release folder.
        subtasks: the subtasks to run (official names, e.g. [existence, OCR]); None = every one present.
        strip_suffix / prompt_suffix: see ``common.build_question``.
        parser: "official" (eval_tool/calculation.py) or "lenient" (lmms-eval's).
        max_new_tokens: default generation length (lmms-eval uses 16).
    """

    mmavg_set = None  # the paper excludes MME from MMAvg

    def __init__(self, path: str, name: str = "mme", subtasks: Optional[Sequence[str]] = None,
                 strip_suffix: str = PLEASE_ANSWER, prompt_suffix: str = SHORT_ANSWER, parser: str = "official",
                 max_new_tokens: int = 16):
        if parser not in PARSERS:
            raise TaskError(f"{name}: parser={parser!r} is not a valid option; choose one of {PARSERS}")
        self.name, self.path = name, path
        self.subtasks = [str(s) for s in subtasks] if subtasks is not None else None
        self.strip_suffix, self.prompt_suffix, self.parser = strip_suffix, prompt_suffix, parser
        self.max_new_tokens = int(max_new_tokens)

    def load(self) -> dict[str, list[dict]]:
        folder = require_file(self.path, self.name, "MME folder", "the output of data/prepare_mme.py or the "
                              "MME_Benchmark_release_version folder")
        if not folder.is_dir():
            raise TaskError(f"{self.name}: {folder} is not a folder; pass the prepared folder (<subtask>.jsonl) or "
                            "the release folder (<subtask>/...)")
        if any(folder.glob("*.jsonl")):
            subtasks = read_prepared(folder)
        elif any((folder / s).is_dir() for s in OFFICIAL_SUBTASKS):
            subtasks = read_release(folder)
        else:
            raise TaskError(f"{self.name}: {folder} holds neither <subtask>.jsonl files (data/prepare_mme.py "
                            "output) nor subtask folders such as existence/ (the release layout)")
        if self.subtasks is not None:
            unknown = [s for s in self.subtasks if s not in subtasks]
            if unknown:
                raise TaskError(f"{self.name}: subtasks {unknown} are not in {folder} (present: {sorted(subtasks)})")
            subtasks = {s: subtasks[s] for s in self.subtasks}
        if not subtasks:
            raise TaskError(f"{self.name}: {folder} holds no questions")
        return subtasks

    def examples(self, limit: Optional[int] = None, prompts: str = "task") -> list[Example]:
        check_prompts(prompts)
        limit = check_limit(limit)
        examples = []
        for subtask, records in self.load().items():
            pairs = _pairs(records, subtask)
            if limit is not None:
                pairs = pairs[: -(-limit // 2)]
            for pair in pairs:
                for k, record in enumerate(pair):
                    question = build_question(record["question"], self.strip_suffix, self.prompt_suffix,
                                              prompts=prompts)
                    examples.append(Example(uid=f"{record['question_id']}#{k}", question=question,
                                            image=Path(record["image_path"]), group=subtask,
                                            record={f: record[f] for f in _RECORD_FIELDS}))
        check_unique(examples, self.name, lambda i: f"question {examples[i].record['question_id']!r}")
        return examples

    def score(self, records: list[dict], out_dir: Path) -> dict:
        tool_dir = Path(out_dir) / EVAL_TOOL_DIR
        if tool_dir.is_dir():
            for stale in tool_dir.glob("*.txt"):  # a previous run's subtasks must not leak into this score
                stale.unlink()
        try:
            write_results_dir(records, tool_dir)
            return score_results_dir(tool_dir, parser=self.parser)
        except ScoringError as err:
            raise TaskError(str(err)) from None

    def headline(self, scores: dict) -> dict[str, float]:
        return {"perception": scores["perception"], "cognition": scores["cognition"], "total": scores["total"]}

    def settings(self) -> dict:
        return {"path": str(self.path), "subtasks": self.subtasks, "strip_suffix": self.strip_suffix,
                "prompt_suffix": self.prompt_suffix}
