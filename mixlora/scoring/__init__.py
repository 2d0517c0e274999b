"""Official scorers for the evaluation benchmarks: pure functions from model outputs to numbers.

No model and no generation here; ``eval.py`` produces predictions, these modules score them.
One module per benchmark (formats and rules in ``docs/eval_scoring.md``):

- ``mme``            MME with the official ``eval_tool/calculation.py`` rules; result-folder reader and writer.
- ``cvbench``        CV-Bench answer-letter parsing and the official combined score.
- ``pope``           LLaVA ``eval_pope.py`` parsing; accuracy, precision, recall, F1, yes-ratio per split.
- ``textvqa``        the VQA answer normalisation and the 10-annotator VQA accuracy.
- ``classification`` VSR, SNLI-VE, CIFAR-10/100, MNIST: label and option-letter matching.
- ``aggregate``      MMAvg, the paper's mean over its 7 zero-shot sets.
- ``score``          the command line: ``python -m mixlora.scoring.score {mme,cvbench,...} PATH``.

This file holds only what every scorer shares: the error type, the JSONL reader/writer that remembers
line numbers (so errors can name ``file line N``), and a required-field lookup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["ScoringError", "JsonlRecords", "read_jsonl", "write_jsonl", "locate", "require_field"]


class ScoringError(ValueError):
    """Bad scorer input (a malformed file, record or option). The message names where and how to fix it."""


class JsonlRecords(list):
    """A list of dict records read from a JSONL file, remembering the file and each record's line number.

    Plain lists of dicts are accepted everywhere a ``JsonlRecords`` is; they are located as "record N".
    """

    def __init__(self, records: Iterable[dict], path: str, line_numbers: Sequence[int]):
        super().__init__(records)
        self.path = path
        self.line_numbers = list(line_numbers)


def read_jsonl(path: str | Path) -> JsonlRecords:
    """Read a JSONL file: one JSON object per line; blank lines are skipped (line numbers still count them)."""
    path = Path(path)
    if not path.is_file():
        raise ScoringError(f"{path}: no such file; pass the path of a JSONL predictions file.")
    records, lines = [], []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScoringError(
                    f"{path} line {line_no}: not valid JSON ({e.msg}); each line must be one JSON object."
                ) from None
            if not isinstance(record, dict):
                raise ScoringError(f"{path} line {line_no}: expected a JSON object, got {type(record).__name__}.")
            records.append(record)
            lines.append(line_no)
    if not records:
        raise ScoringError(f"{path}: the file holds no records; nothing to score.")
    return JsonlRecords(records, str(path), lines)


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write records as JSONL (UTF-8, one object per line, non-ASCII kept readable). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
    return path


def locate(records: Sequence[Mapping], index: int) -> str:
    """Where record ``index`` came from: "FILE line N" for ``JsonlRecords``, else "record N" (1-based)."""
    if isinstance(records, JsonlRecords):
        return f"{records.path} line {records.line_numbers[index]}"
    return f"record {index + 1}"


def require_field(records: Sequence[Mapping], index: int, field: str, task: str, types: tuple = (str,)) -> Any:
    """Return ``records[index][field]``, raising a ScoringError naming the task, file and line if absent or mistyped."""
    record = records[index]
    if field not in record:
        raise ScoringError(f"{task}: {locate(records, index)} has no '{field}' field; every record needs it.")
    value = record[field]
    if not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in types)
        raise ScoringError(
            f"{task}: {locate(records, index)} field '{field}' is {type(value).__name__} ({value!r}); "
            f"expected {wanted}."
        )
    return value
