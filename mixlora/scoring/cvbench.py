"""CV-Bench (Cambrian-1) scoring: answer-letter parsing and the official combined score
(docs/benchmarks.md#cv-bench).

Records (JSONL, one per question; the dataset's fields plus our ``prediction``)::

    {"idx": 0, "type": "2D", "task": "Count", "question": "...", "choices": ["3", "2", "1", "0"],
     "answer": "(B)", "prompt": "...", "source": "ADE20K", "prediction": "(B) 2"}

Required: ``type`` ("2D" or "3D"), ``task``, ``source``, ``answer`` ("(X)" with X an upper-case letter) and
``prediction``. ``choices`` (a list of strings) is needed only for choice-text matching and, when present,
is used to check that the answer letter exists: a ground-truth letter past the choices is an error (the record
is broken), while a predicted letter past them, e.g. "(E)" of four choices, is simply wrong, as in the official
rule (extract a letter, compare it with the answer), and is not counted as ``unparsed``.

Parsing a prediction into a letter (``answer_parsing``):

- ``"letter"`` (default, the peer rule): the first "(X)" in the output with X in A-Z; if there is none, the
  first character after leading whitespace, if it is an upper-case letter A-Z. Not uppercased: a lower-case
  first letter is usually a word or the article "a", not an option.
- ``"letter_or_choice"``: as above, but before the first-character fallback, an output equal to exactly one
  choice's text (case-insensitive, surrounding whitespace and one trailing "." ignored) selects that choice.

Metrics, in percent::

    by_source[s]  = accuracy over records with source s
    by_task[t]    = accuracy over records with task t
    accuracy_2d   = mean(by_source["ADE20K"], by_source["COCO"])     accuracy_3d = by_source["Omni3D"]
    overall       = (accuracy_2d + accuracy_3d) / 2                  (the official CV-Bench score)

Fallback for other sources (synthetic suites): accuracy_2d is the mean, over the distinct sources of the 2D
records, of each source's accuracy on its 2D records (likewise 3D); with the official sources this is
exactly the official formula. ``partial`` is True unless the 2D sources are exactly {ADE20K, COCO} and the
3D sources exactly {Omni3D}. If one type has no records at all its accuracy is ``None`` and ``overall`` is
the other type's accuracy. ``plain_accuracy`` (all questions pooled) is what lmms-eval reports; it is not
the official score.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from . import ScoringError, locate, read_jsonl, require_field

OFFICIAL_SOURCES = {"2D": ("ADE20K", "COCO"), "3D": ("Omni3D",)}
TYPES = ("2D", "3D")
ANSWER_PARSING = ("letter", "letter_or_choice")

_ANSWER = re.compile(r"\(([A-Z])\)")


def parse_answer_field(answer: str) -> str | None:
    """The letter of a dataset ``answer`` such as "(B)" (surrounding whitespace allowed), else None."""
    m = _ANSWER.fullmatch(answer.strip())
    return m.group(1) if m else None


def _norm_choice(text: str) -> str:
    text = " ".join(text.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def parse_prediction(
    prediction: str, choices: Sequence[str] | None = None, answer_parsing: str = "letter"
) -> str | None:
    """The option letter a model output names, or None if it names none (see the module docstring)."""
    check_answer_parsing(answer_parsing)
    m = _ANSWER.search(prediction)
    if m:
        return m.group(1)
    if answer_parsing == "letter_or_choice" and choices:
        target = _norm_choice(prediction)
        hits = [i for i, c in enumerate(choices) if _norm_choice(str(c)) == target]
        if len(hits) == 1:
            return chr(ord("A") + hits[0])
    head = prediction.lstrip()[:1]
    return head if "A" <= head <= "Z" else None


def check_answer_parsing(answer_parsing: str) -> str:
    if answer_parsing not in ANSWER_PARSING:
        raise ScoringError(
            f"cvbench: answer_parsing={answer_parsing!r} is not a valid option; choose one of "
            f"{', '.join(map(repr, ANSWER_PARSING))}."
        )
    return answer_parsing


def read_predictions(path: str | Path) -> list[dict]:
    """Read a CV-Bench predictions JSONL (records remember their line numbers for error messages)."""
    return read_jsonl(path)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_cvbench(records: Sequence[Mapping], answer_parsing: str = "letter") -> dict:
    """Score CV-Bench predictions. Returns percent accuracies (see the module docstring for every key)."""
    check_answer_parsing(answer_parsing)
    if not records:
        raise ScoringError("cvbench: no records to score.")
    by_source, by_task, by_type = defaultdict(list), defaultdict(list), defaultdict(list)
    by_type_source: dict[str, dict[str, list]] = {t: defaultdict(list) for t in TYPES}
    unparsed = 0
    for i, record in enumerate(records):
        kind = require_field(records, i, "type", "cvbench")
        if kind not in TYPES:
            raise ScoringError(f"cvbench: {locate(records, i)}: type {kind!r} is not one of {', '.join(TYPES)}.")
        task = require_field(records, i, "task", "cvbench")
        source = require_field(records, i, "source", "cvbench")
        answer = require_field(records, i, "answer", "cvbench")
        prediction = require_field(records, i, "prediction", "cvbench")
        gold = parse_answer_field(answer)
        if gold is None:
            raise ScoringError(
                f"cvbench: {locate(records, i)}: answer {answer!r} is not of the form '(X)' with X an upper-case "
                "letter, e.g. '(B)'."
            )
        choices = record.get("choices")
        if choices is not None:
            if not isinstance(choices, list):
                raise ScoringError(
                    f"cvbench: {locate(records, i)}: 'choices' must be a list, got {type(choices).__name__}."
                )
            if ord(gold) - ord("A") >= len(choices):
                raise ScoringError(
                    f"cvbench: {locate(records, i)}: answer {answer!r} points past the {len(choices)} choices; fix the "
                    "record's answer or choices."
                )
        letter = parse_prediction(prediction, choices, answer_parsing)
        unparsed += letter is None
        right = letter == gold
        by_source[source].append(right)
        by_task[task].append(right)
        by_type[kind].append(right)
        by_type_source[kind][source].append(right)

    def acc(flags):
        return 100.0 * sum(flags) / len(flags)

    type_acc = {t: _mean([acc(f) for f in by_type_source[t].values()]) for t in TYPES}
    sources = {t: sorted(by_type_source[t]) for t in TYPES}
    official = all(sorted(OFFICIAL_SOURCES[t]) == sources[t] for t in TYPES)
    return {
        "overall": _mean([a for a in type_acc.values() if a is not None]),
        "accuracy_2d": type_acc["2D"],
        "accuracy_3d": type_acc["3D"],
        "by_source": {s: acc(f) for s, f in sorted(by_source.items())},
        "by_task": {t: acc(f) for t, f in sorted(by_task.items())},
        "by_type": {t: acc(f) for t, f in sorted(by_type.items())},
        "plain_accuracy": acc([r for flags in by_source.values() for r in flags]),
        "counts": {
            "total": len(records),
            "by_source": {s: len(f) for s, f in sorted(by_source.items())},
            "by_task": {t: len(f) for t, f in sorted(by_task.items())},
        },
        "unparsed": unparsed,
        "sources_2d": sources["2D"],
        "sources_3d": sources["3D"],
        "partial": not official,
        "answer_parsing": answer_parsing,
    }
