"""MMAvg: the paper's mean over its 7 zero-shot sets, MME excluded (docs/benchmarks.md#mmavg).

    MMAvg = (TextVQA + VSR + SNLI-VE + CIFAR-10 + CIFAR-100 + MNIST + POPE) / 7      (each in percent)

Set names (keys): textvqa, vsr, snli_ve, cifar10, cifar100, mnist, pope. A missing set is an error unless
``allow_partial=True``, which averages the sets present and marks the result ``"partial": true``. The
paper's POPE number is one value although POPE has three splits; how it was formed is unknown. We use the
mean over splits of one metric, chosen by ``pope_metric`` ("f1" by default, the headline POPE metric;
"accuracy" is the other choice). Report which one you used.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from . import ScoringError

MMAVG_SETS = ("textvqa", "vsr", "snli_ve", "cifar10", "cifar100", "mnist", "pope")
POPE_METRICS = ("f1", "accuracy")


def headline(name: str, result: Any, pope_metric: str = "f1") -> float:
    """The single number MMAvg uses from one scorer's output (or a number passed through unchanged).

    textvqa: ``result["accuracy"]``; classification sets: ``result["accuracy"]``;
    pope: ``result["mean"][pope_metric]``.
    """
    if pope_metric not in POPE_METRICS:
        raise ScoringError(f"mmavg: pope_metric={pope_metric!r} is not a valid option; choose one of {POPE_METRICS}.")
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return float(result)
    if not isinstance(result, Mapping):
        raise ScoringError(f"mmavg: '{name}' must be a number or a scorer result object, got {type(result).__name__}.")
    try:
        value = result["mean"][pope_metric] if name == "pope" else result["accuracy"]
    except (KeyError, TypeError):
        wanted = f"'mean'.'{pope_metric}'" if name == "pope" else "'accuracy'"
        raise ScoringError(
            f"mmavg: the result given for '{name}' has no {wanted} entry; pass that scorer's output."
        ) from None
    return float(value)


def mmavg(scores: Mapping[str, Any], allow_partial: bool = False, pope_metric: str = "f1") -> dict:
    """MMAvg from ``{set name: percent score or scorer result}``.

    Returns ``{"mmavg", "sets": {name: score}, "missing": [...], "partial": bool, "pope_metric"}``.
    Unknown names are an error (MME in particular is excluded by the paper's definition).
    """
    unknown = sorted(set(scores) - set(MMAVG_SETS))
    if unknown:
        hint = " MME is not part of MMAvg (the paper excludes it); report it separately." if "mme" in unknown else ""
        raise ScoringError(f"mmavg: unknown set name(s) {unknown}; valid names are {', '.join(MMAVG_SETS)}.{hint}")
    values = {name: headline(name, scores[name], pope_metric) for name in MMAVG_SETS if name in scores}
    for name, value in values.items():
        if not (math.isfinite(value) and 0.0 <= value <= 100.0):
            raise ScoringError(f"mmavg: '{name}' = {value} is not a percentage in [0, 100].")
    missing = [name for name in MMAVG_SETS if name not in values]
    if missing and not allow_partial:
        raise ScoringError(
            f"mmavg: missing {', '.join(missing)}; MMAvg is the mean of all 7 sets. Score them, or pass "
            "allow_partial=True (CLI: --allow-partial) for a mean over the sets present, marked partial."
        )
    if not values:
        raise ScoringError("mmavg: no scores given.")
    return {
        "mmavg": sum(values.values()) / len(values),
        "sets": values,
        "missing": missing,
        "partial": bool(missing),
        "pope_metric": pope_metric,
    }
