"""POPE scoring with LLaVA's ``eval_pope.py`` parsing; metrics per split and their mean
(docs/benchmarks.md#pope).

Records (JSONL)::

    {"prediction": "Yes, there is a dog.", "target": "yes", "split": "random", ...}

``target`` is "yes" or "no" (case and surrounding whitespace ignored); ``split`` is any name (the official
ones are random, popular, adversarial). Both field names can be changed (``target_field``, ``split_field``).

Parsing (``parse_pope``), exactly LLaVA's: keep the text before the first "." (if any), delete commas, split
on single spaces; the answer is "no" if one of the pieces is exactly "No", "no" or "not", else "yes". So
"NO" and "Nope" count as yes, and there is no "other" class. Quirks kept on purpose: no strip, no lowercasing.

Per split, with yes as the positive class (all in percent)::

    accuracy  = (TP + TN) / N
    precision = TP / (TP + FP)        (0 when TP + FP = 0; LLaVA would divide by zero)
    recall    = TP / (TP + FN)        (0 when TP + FN = 0)
    f1        = 2·P·R / (P + R)       (0 when P + R = 0)
    yes_ratio = #predicted yes / N    (from the PREDICTIONS, as LLaVA does; lmms-eval's uses the ground truth)

``mean`` averages each metric over the splits present (how MixLoRA merged the splits is unknown).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from . import ScoringError, locate, require_field

OFFICIAL_SPLITS = ("random", "popular", "adversarial")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def parse_pope(prediction: str) -> str:
    """LLaVA's eval_pope parser: "yes" or "no" (see the module docstring)."""
    text = prediction.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_metrics(predictions: Sequence[str], targets: Sequence[str]) -> dict:
    """Metrics (percent) and counts from parsed predictions and targets, both lists of "yes"/"no"."""
    if len(predictions) != len(targets) or not predictions:
        raise ScoringError(
            f"pope: need equally many predictions and targets, at least one "
            f"(got {len(predictions)}, {len(targets)})."
        )
    pairs = list(zip(predictions, targets))
    tp = pairs.count(("yes", "yes"))
    fp = pairs.count(("yes", "no"))
    tn = pairs.count(("no", "no"))
    fn = pairs.count(("no", "yes"))
    n = len(pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "count": n,
    }


def score_pope(records: Sequence[Mapping], target_field: str = "target", split_field: str | None = "split") -> dict:
    """Score POPE predictions grouped by split (``split_field=None``: one split called "all").

    Returns ``{"splits": {name: pope_metrics}, "mean": {metric: mean over splits}, "missing_splits": [...],
    "partial": bool}``; ``missing_splits`` lists the official splits absent (``partial`` is True if any is).
    """
    if not records:
        raise ScoringError("pope: no records to score.")
    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for i in range(len(records)):
        prediction = require_field(records, i, "prediction", "pope")
        target = require_field(records, i, target_field, "pope").strip().lower()
        if target not in ("yes", "no"):
            raise ScoringError(
                f"pope: {locate(records, i)}: {target_field} {records[i][target_field]!r} is not yes/no."
            )
        split = "all" if split_field is None else require_field(records, i, split_field, "pope")
        preds, gts = groups[split]
        preds.append(parse_pope(prediction))
        gts.append(target)
    splits = {name: pope_metrics(*groups[name]) for name in sorted(groups)}
    mean = {m: sum(s[m] for s in splits.values()) / len(splits) for m in METRICS}
    missing = [s for s in OFFICIAL_SPLITS if s not in splits]
    return {"splits": splits, "mean": mean, "missing_splits": missing, "partial": bool(missing)}
