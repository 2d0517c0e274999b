"""Collect Table 2 runs (seen-task accuracy, scored by `python -m mixlora.tables table2`) into one table beside the
paper's numbers.

    python -m mixlora.tables.aggregate_table2 RUN_DIR [RUN_DIR ...] --out results/table2   # = scripts/table2_aggregate.py

Each RUN_DIR is a training run whose seen-task evaluation is in RUN/seen/eval/metrics.json (tasks named
``seen_<key>``, key in scienceqa, coco, fairface, inaturalist, stvqa, pacs) and whose RUN/config.yaml gives the
adapter and ``data.tasks``. Runs trained on a task subset (``data.tasks`` set) are LoRA specialists: all
specialists of one rank form one row, each contributing the column of the task it was scored on, as the
paper's LoRA_Specialist rows do. Every other run is one row. AVG = mean of the six columns (only when all six
are there). Runs of the paper's stack (model llava_v1_vicuna7b) get the paper's value (results/paper/table2.csv)
in parentheses. Writes OUT/results.csv and OUT/results.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from .paper import paper_dir
from .rows import SEEN_TASKS

SEEN = {key: task.column for key, task in SEEN_TASKS.items()}  # key -> its column in results/paper/table2.csv
PAPER_STACK = "build_pretrained_llava"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_run(run: Path) -> dict:
    """{method, E, r, variant, specialist, paper_stack, scores{key: accuracy}, run} of one evaluated run."""
    metrics_file = run / "seen" / "eval" / "metrics.json"
    if not metrics_file.is_file():
        fail(f"{run} has no seen/eval/metrics.json: score it on the seen tasks first (python -m mixlora.tables table2, or "
             f"python eval.py run={run} output_dir={run}/seen tasks=[seen_...] +task.seen_...)")
    if not (run / "config.yaml").is_file():
        fail(f"{run} has no config.yaml: it is not a train.py run directory")
    config = yaml.safe_load((run / "config.yaml").read_text())
    adapter = config.get("adapter") or {"kind": "none"}
    kind = adapter.get("kind", "none")
    tasks = json.loads(metrics_file.read_text()).get("tasks", {})
    scores = {key: tasks[f"seen_{key}"]["headline"]["accuracy"] for key in SEEN if f"seen_{key}" in tasks}
    if not scores:
        fail(f"{metrics_file} holds none of the seen tasks {['seen_' + k for k in SEEN]}")
    specialist = bool((config.get("data") or {}).get("tasks"))
    if kind == "mixlora":
        released = (adapter.get("cfs"), adapter.get("routing_tokens"), adapter.get("decode_routing")) == (
            "released", "all", "per_step") and adapter.get("routing_precision", "layer") == "layer"
        method, E, variant = "MixLoRA", adapter.get("num_factors"), "released" if released else "corrected"
    else:
        method, E, variant = {"lora": "LoRA", "none": "base"}.get(kind, kind), None, ""
    if specialist:
        method += "_Specialist"
    builder = ((config.get("model") or {}).get("builder") or {}).get("_target_", "")
    return {"run": run.name, "method": method, "E": E, "r": adapter.get("rank"), "variant": variant,
            "specialist": specialist, "paper_stack": PAPER_STACK in builder, "scores": scores}


def combine(runs: list[dict]) -> list[dict]:
    """One row per non-specialist run; the specialists of one (method, E, r, variant, stack) merged into one row."""
    rows: list[dict] = []
    merged: dict[tuple, dict] = {}
    for run in runs:
        if not run["specialist"]:
            rows.append(dict(run, runs=[run["run"]]))
            continue
        key = (run["method"], run["E"], run["r"], run["variant"], run["paper_stack"])
        if key not in merged:
            merged[key] = dict(run, scores={}, runs=[])
            rows.append(merged[key])
        row = merged[key]
        twice = sorted(set(row["scores"]) & set(run["scores"]))
        if twice:
            fail(f"specialists {row['runs']} and {run['run']} were both scored on {twice}; give each seen task "
                 "one specialist")
        row["scores"].update(run["scores"])
        row["runs"].append(run["run"])
    for row in rows:
        values = [row["scores"].get(k) for k in SEEN]
        row["avg"] = sum(values) / len(values) if all(v is not None for v in values) else None
    return rows


def paper_row(row: dict) -> dict | None:
    if not row["paper_stack"]:
        return None  # the tiny stack is not comparable with the paper's numbers
    for p in csv.DictReader(open(paper_dir() / "table2.csv")):
        if p["model"] == row["method"] and p["r"] == str(row["r"]) and (p["E"] or None) == (
                str(row["E"]) if row["E"] is not None else None):
            return p
    return None


def fmt(value) -> str:
    return "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def markdown(rows: list[dict]) -> str:
    header = ["method", "E", "r", "variant", *SEEN.values(), "AVG", "runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        paper = paper_row(row)
        cells = []
        for key, column in [*SEEN.items(), ("avg", "AVG")]:
            value = row["avg"] if key == "avg" else row["scores"].get(key)
            cells.append(fmt(value) + (f" ({paper[column]})" if paper else ""))
        lines.append("| " + " | ".join([row["method"], fmt(row["E"]), fmt(row["r"]), row["variant"], *cells,
                                         ", ".join(row["runs"])]) + " |")
    notes = ["", "Accuracy (%) on held-out instances of six Vision-Flan training tasks (the paper's Table 2); "
             "LoRA_Specialist rows combine one specialist per task, each scored on its own task. AVG = mean of the "
             "six. In parentheses: the paper's value, only for runs of the paper's stack."]
    return "\n".join(lines + notes) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories scored on the seen tasks")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.csv and results.md")
    args = parser.parse_args(argv)
    rows = combine([read_run(r) for r in args.runs])
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "E", "r", "variant", *SEEN.values(), "AVG", "runs"])
        for row in rows:
            writer.writerow([row["method"], fmt(row["E"]), fmt(row["r"]), row["variant"],
                             *[fmt(row["scores"].get(k)) for k in SEEN], fmt(row["avg"]), " ".join(row["runs"])])
    table = markdown(rows)
    (args.out / "results.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'results.csv'} and {args.out / 'results.md'}")
    return rows


if __name__ == "__main__":
    main()
