"""Accuracy for the classification-style sets: VSR, SNLI-VE, CIFAR-10, CIFAR-100, MNIST
(docs/benchmarks.md#classification-sets).

Records (JSONL; MixLoRA's released files have these fields)::

    {"prompt": "Is the cat left of the dog?\\nOptions: (a) True (b) False", "target": "True", "prediction": "(a)"}
    {"prompt": "What is in the image?", "target": "airplane", "prediction": "It is an airplane."}

``prediction`` and ``target`` are required; ``prompt`` is optional (only read for inline options).

Normalisation (``normalize_label``): lowercase; every character that is not a letter, digit or whitespace
(Unicode-aware; "_" included) becomes a space; whitespace runs collapse to one space; strip.
"T-shirt." -> "t shirt", "(b) Cat" -> "b cat".

Options: if the prompt contains "Options:" (any case), the markers "(a)", "(b)", ... after it, in
alphabetical order from (a), define the options; an option's text runs to the next marker or the end of
its line. A target written "(x) text" (Vision-Flan style) names option x: its label is the option's text
when the prompt has options (the letter must be one of them), else the text after the marker.

Matching (``matching``):

- ``"standard"`` (default), first rule that applies decides:
  1. Option letter. When the prompt has options (or the target has a letter): the first "(x)" marker in the
     prediction with x a valid option letter, or else a prediction that is only a letter ("b", "B.",
     "(b)"), selects option x. Correct iff x is the target's option (same letter, or same normalised text).
     The letter decides even if text follows: "(b) dog" is option (b).
  2. Equality: normalised prediction == normalised target label.
  3. Whole-word single match: the target label occurs in the prediction as a whole-word phrase, and no
     other label of the label set does (labels that are themselves phrases inside the target label are not
     counted). The label set is the prompt's options if any, else ``labels`` if given, else every distinct
     target label in the records scored together. "It is an airplane." -> airplane; "airplane or bird" ->
     wrong; "airplanes" -> wrong; MNIST "17" does not match "7".
- ``"exact"``: only rule 2 (also accepting equality with the whole normalised target, "(b) cat").

Known limits (documented, not corrected): negation is not understood ("not true" contains "true"), and
number words are not mapped ("seven" does not match "7").
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from . import ScoringError, locate, require_field

MATCHING = ("standard", "exact")

_NON_WORD = re.compile(r"[^\w\s]|_")
_OPTIONS_HEADER = re.compile(r"options\s*:", re.IGNORECASE)
_MARKER = re.compile(r"\(([A-Za-z])\)")
_BARE_LETTER = re.compile(r"\s*\(?([A-Za-z])\)?\s*[.:]?\s*")
_LEADING_LETTER = re.compile(r"\s*\(([A-Za-z])\)\s*(.*)", re.DOTALL)


def normalize_label(text: str) -> str:
    """Lowercase, punctuation to spaces, collapse whitespace, strip (see the module docstring)."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def check_matching(matching: str) -> str:
    if matching not in MATCHING:
        raise ScoringError(
            f"classification: matching={matching!r} is not a valid option; "
            f"choose one of {', '.join(map(repr, MATCHING))}."
        )
    return matching


def parse_options(prompt: str | None) -> dict[str, str]:
    """Inline options of a prompt, ``{"a": "True", "b": "False"}`` (letters lower-case); {} if none."""
    if not prompt:
        return {}
    header = _OPTIONS_HEADER.search(prompt)
    if header is None:
        return {}
    rest = prompt[header.end() :]
    markers = []
    for m in _MARKER.finditer(rest):
        if m.group(1).lower() == chr(ord("a") + len(markers)):
            markers.append(m)
    options = {}
    for k, m in enumerate(markers):
        end = markers[k + 1].start() if k + 1 < len(markers) else len(rest)
        options[m.group(1).lower()] = rest[m.end() : end].split("\n")[0].strip()
    return options


def split_target(target: str) -> tuple[str | None, str]:
    """ "(b) cat" -> ("b", "cat"); "cat" -> (None, "cat")."""
    m = _LEADING_LETTER.fullmatch(target)
    return (m.group(1).lower(), m.group(2).strip()) if m else (None, target)


def _contains(text: str, phrase: str) -> bool:
    # Both sides are normalised (single spaces), so padding with spaces gives whole-word matching.
    return bool(phrase) and f" {phrase} " in f" {text} "


def _predicted_letter(prediction: str, valid: Iterable[str] | None) -> str | None:
    """First "(x)" with x valid, else a bare letter; ``valid=None`` means any letter a-z."""
    ok = (lambda x: True) if valid is None else (lambda x, v=set(valid): x in v)
    for m in _MARKER.finditer(prediction):
        if ok(m.group(1).lower()):
            return m.group(1).lower()
    m = _BARE_LETTER.fullmatch(prediction)
    if m and ok(m.group(1).lower()):
        return m.group(1).lower()
    return None


def match_prediction(
    prediction: str,
    target: str,
    prompt: str | None = None,
    labels: Sequence[str] | None = None,
    matching: str = "standard",
) -> bool:
    """Whether one prediction is correct under the rules of the module docstring.

    ``labels``: the label set for the whole-word rule when the prompt has no options (raw, normalised here);
    None means only the target itself is known, so "true or false" would match "true" (``score_classification``
    therefore defaults it to the distinct targets of the records).
    Raises ScoringError if the target names an option letter the prompt does not offer.
    """
    check_matching(matching)
    options = parse_options(prompt)
    t_letter, t_text = split_target(target)
    if t_letter is not None and options:
        if t_letter not in options:
            raise ScoringError(
                f"target {target!r} names option ({t_letter}) but the prompt offers only "
                f"{', '.join(f'({k})' for k in options)}."
            )
        gold = normalize_label(options[t_letter])
    else:
        gold = normalize_label(t_text)
    pred = normalize_label(prediction)
    if matching == "exact":
        return pred == gold or pred == normalize_label(target)

    if options or t_letter is not None:
        letter = _predicted_letter(prediction, options.keys() if options else None)
        if letter is not None:
            if t_letter is not None:
                return letter == t_letter
            return letter in options and normalize_label(options[letter]) == gold
    if pred == gold:
        return True
    label_set = {normalize_label(x) for x in (options.values() if options else labels or ())} | {gold}
    hits = {label for label in label_set if _contains(pred, label)}
    others = {label for label in hits if label != gold and not _contains(gold, label)}
    return gold in hits and not others


def score_classification(
    records: Sequence[Mapping],
    task: str = "classification",
    labels: Sequence[str] | None = None,
    matching: str = "standard",
) -> dict:
    """Accuracy in percent over ``records``: ``{"task", "accuracy", "correct", "count", "matching", "labels"}``.

    ``labels`` defaults to the distinct target labels of ``records`` (reported back, normalised and sorted).
    """
    check_matching(matching)
    if not records:
        raise ScoringError(f"{task}: no records to score.")
    targets, predictions, prompts = [], [], []
    for i, record in enumerate(records):
        predictions.append(require_field(records, i, "prediction", task))
        targets.append(require_field(records, i, "target", task))
        prompt = record.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ScoringError(f"{task}: {locate(records, i)}: 'prompt' must be a string.")
        prompts.append(prompt)
    if labels is None:
        labels = sorted({normalize_label(split_target(t)[1]) for t in targets} - {""})
    correct = 0
    for i, (p, t, q) in enumerate(zip(predictions, targets, prompts)):
        try:
            correct += match_prediction(p, t, q, labels, matching)
        except ScoringError as e:
            raise ScoringError(f"{task}: {locate(records, i)}: {e}") from None
    return {
        "task": task,
        "accuracy": 100.0 * correct / len(records),
        "correct": correct,
        "count": len(records),
        "matching": matching,
        "labels": sorted(normalize_label(x) for x in labels),
    }
