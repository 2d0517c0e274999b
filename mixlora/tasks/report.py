"""The evaluation summary: ``eval/metrics.json`` (every task's headline numbers + MMAvg) and ``eval/results.md``.

``eval/metrics.json``::

    {"tasks": {"mme": {"headline": {"perception": ..., "cognition": ..., "total": ...}, "samples": 28,
                       "partial": true}, "pope": {...}, ...},
     "mmavg": {"mmavg": 51.2, "sets": {...}, "missing": [...], "partial": false, "pope_metric": "f1"} | null,
     "partial": true,          # a task is partial (MME/CV-Bench/POPE parts missing), MMAvg lacks a set, or limit
     "limit": null, "decoding": {...}, "source": {...}}

MMAvg (``mixlora.scoring.aggregate.mmavg``) is the mean of the paper's seven sets (MME excluded); it is computed
whenever at least one of them was evaluated and marked ``"partial": true`` unless all seven were. Scores are
percent (MME: points, max 200 per subtask).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from mixlora.scoring.aggregate import MMAVG_SETS, mmavg


def summarize(task_metrics: Mapping[str, dict], mmavg_inputs: Mapping[str, Any], pope_metric: str = "f1",
              limit: Optional[int] = None, decoding: Optional[dict] = None, source: Optional[dict] = None) -> dict:
    """``task_metrics``: {task: its metrics.json}; ``mmavg_inputs``: {MMAvg set name: that scorer's output}."""
    tasks = {name: {"headline": m["headline"], "samples": m["samples"], "partial": bool(m["scores"].get("partial"))}
             for name, m in task_metrics.items()}
    average = mmavg(dict(mmavg_inputs), allow_partial=True, pope_metric=pope_metric) if mmavg_inputs else None
    partial = (limit is not None or any(t["partial"] for t in tasks.values())
               or (average is not None and average["partial"]))
    return {"tasks": tasks, "mmavg": average, "partial": partial, "limit": limit, "decoding": decoding or {},
            "source": source or {}}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def results_markdown(summary: Mapping) -> str:
    """A readable table: one row per task with its headline numbers, then MMAvg."""
    lines = ["# Evaluation results", ""]
    source = summary.get("source") or {}
    decoding = summary.get("decoding") or {}
    if source:
        lines.append("Model: " + ", ".join(f"{k}={v}" for k, v in source.items() if v is not None))
    if decoding:
        lines.append("Decoding: " + ", ".join(f"{k}={v}" for k, v in decoding.items()))
    if summary.get("limit") is not None:
        lines.append(f"**Smoke run: limit={summary['limit']} examples per group; not comparable with full scores.**")
    lines += ["", "| Task | Samples | Scores |", "|---|---:|---|"]
    for name, task in summary["tasks"].items():
        scores = ", ".join(f"{k} {_fmt(v)}" for k, v in task["headline"].items())
        flag = " (partial)" if task["partial"] else ""
        lines.append(f"| {name}{flag} | {task['samples']} | {scores} |")
    average = summary.get("mmavg")
    if average is not None:
        missing = f" (partial: missing {', '.join(average['missing'])})" if average["partial"] else ""
        used = ", ".join(f"{k} {_fmt(v)}" for k, v in average["sets"].items())
        lines.append(f"| **MMAvg**{missing} | | **{_fmt(average['mmavg'])}** (POPE {average['pope_metric']}; {used}) |")
    lines += ["", f"MMAvg = mean of the paper's seven sets ({', '.join(MMAVG_SETS)}); MME is reported separately. "
              "MME scores are points (perception max 2000, cognition max 800); everything else is percent.", ""]
    return "\n".join(lines)
