"""Collect evaluated run directories into one table (CSV + markdown) beside the paper's numbers, with plots.

    python -m mixlora.tables.aggregate RUN_DIR [RUN_DIR ...] --out results/mini   # = scripts/aggregate.py

Each RUN_DIR is a training run evaluated with eval.py (RUN/eval/metrics.json, RUN/config.yaml and, for trained
runs, RUN/summary.json). A row per run: adapter (kind, E, r, variant), parameters (trainable, total, and active
per instance: MixLoRA uses r of its E factors), MME (perception, cognition, total), the seven sets and MMAvg,
CV-Bench, the git commit and the adapter config. Runs of the paper's stack (model llava_v1_vicuna7b) are matched
to results/paper/table1.csv by (method, E, r), and the paper's value is printed next to ours.
Writes OUT/results.csv, OUT/results.md and OUT/plots/{datasets,mme_subtasks,params_vs_mmavg}.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml

from .paper import paper_dir

SEVEN = ["textvqa", "vsr", "snli_ve", "cifar10", "cifar100", "mnist", "pope"]
PAPER_COLUMNS = {"textvqa": "TextVQA", "vsr": "VSR", "snli_ve": "SNLI-VE", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100", "mnist": "MNIST", "pope": "POPE", "mmavg": "MMAvg", "mme_total": "MME"}
COLUMNS = ["mme_perception", "mme_cognition", "mme_total", "cvbench", *SEVEN, "mmavg", "seen"]


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def describe_adapter(adapter: dict) -> dict:
    kind = adapter.get("kind", "none")
    if kind == "mixlora":
        # The variant is decided by the CFS formula and the routing tokens; IFS-only (cfs none) belongs to either.
        cfs, tokens, decode = adapter.get("cfs"), adapter.get("routing_tokens"), adapter.get("decode_routing")
        precision = adapter.get("routing_precision")  # absent in runs saved before the option existed
        if tokens == "all" and cfs in ("released", "none") and precision in ("layer", None):
            variant = "released" + (", prefill decoding" if decode == "prefill" else "")
        elif tokens == "prompt" and cfs in ("paper", "none") and precision in ("float32", None):
            variant = "corrected" + (", per-step decoding" if decode == "per_step" else "")
        else:
            variant = (f"custom (cfs {cfs}, routing tokens {tokens}, routing precision {precision}, "
                       f"decoding {decode})")
        if cfs == "none":
            variant += ", IFS only"
        if adapter.get("routing_source", "instance") != "instance":
            variant += f", {adapter['routing_source']} routing"
        return {"method": "MixLoRA", "E": adapter.get("num_factors"), "r": adapter.get("rank"), "variant": variant}
    if kind == "lora":
        return {"method": "LoRA", "E": None, "r": adapter.get("rank"), "variant": ""}
    return {"method": "base", "E": None, "r": None, "variant": ""}


def active_parameters(params: dict, adapter: dict) -> int:
    """Parameters one instance actually uses among the trainable ones: r of E pool rows for MixLoRA."""
    pools = params["pools"]["trainable"]
    if adapter.get("kind") == "mixlora":
        pools = pools * adapter["rank"] // adapter["num_factors"]
    return pools + params["projector"]["trainable"] + params["llm"]["trainable"]


def read_run(run: Path) -> dict:
    metrics_file = run / "eval" / "metrics.json"
    if not metrics_file.is_file():
        fail(f"{run} has no eval/metrics.json: evaluate it first with `python eval.py run={run}`")
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    metrics = json.loads(metrics_file.read_text())
    tasks = metrics.get("tasks", {})
    adapter = config.get("adapter") or {"kind": "none"}
    row = {"run": run.name, **describe_adapter(adapter)}
    head = lambda t, k: tasks.get(t, {}).get("headline", {}).get(k)  # noqa: E731
    row.update(mme_perception=head("mme", "perception"), mme_cognition=head("mme", "cognition"),
               mme_total=head("mme", "total"), cvbench=head("cvbench", "overall"))
    for t in SEVEN:
        row[t] = head(t, "f1") if t == "pope" else head(t, "accuracy")
    present = [row[t] for t in SEVEN if row[t] is not None]
    row["mmavg"] = sum(present) / len(present) if len(present) == len(SEVEN) else None
    row["seen"] = head("seen", "average")  # seen tasks: mean per-task accuracy (Table 2's AVG)
    params = summary.get("parameters")
    if params:
        row.update(trainable=params["all"]["trainable"], total=params["all"]["total"],
                   active=active_parameters(params, adapter))
    else:
        row.update(trainable=None, total=None, active=None)
    row["git_commit"] = summary.get("git_commit")
    row["model"] = (config.get("model") or {}).get("builder", {}).get("_target_", "")
    row["adapter_config"] = json.dumps({k: v for k, v in adapter.items() if k not in ("_target_", "target_modules")},
                                       sort_keys=True)
    mme_file = run / "eval" / "mme" / "metrics.json"
    row["_mme_subtasks"] = (json.loads(mme_file.read_text())["scores"].get("subtasks", {})
                            if mme_file.is_file() else {})
    return row


def paper_row(row: dict) -> dict | None:
    if "build_pretrained_llava" not in row["model"]:
        return None  # tiny or other stacks are not comparable with the paper's numbers
    for p in csv.DictReader(open(paper_dir() / "table1.csv")):
        if p["model"] == row["method"] and str(p["r"]) == str(row["r"]) and str(p["E"] or None) == str(row["E"]):
            return p
    return None


def fmt(value) -> str:
    return "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def markdown(rows: list[dict]) -> str:
    header = ["run", "method", "E", "r", "variant", "trainable", "active/inst.", "MME P", "MME C", "MME",
              "CV-Bench", "TextVQA", "VSR", "SNLI-VE", "CIFAR-10", "CIFAR-100", "MNIST", "POPE F1", "MMAvg", "Seen",
              "commit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        paper = paper_row(r)
        cell = lambda k: fmt(r[k]) + (f" ({paper[PAPER_COLUMNS[k]]})" if paper and k in PAPER_COLUMNS else "")  # noqa
        lines.append("| " + " | ".join([r["run"], r["method"], fmt(r["E"]), fmt(r["r"]), r["variant"],
                                         fmt(r["trainable"]), fmt(r["active"]), fmt(r["mme_perception"]),
                                         fmt(r["mme_cognition"]), cell("mme_total"), fmt(r["cvbench"]),
                                         *[cell(t) for t in SEVEN], cell("mmavg"), fmt(r["seen"]),
                                         fmt(r["git_commit"])]) + " |")
    notes = ["", "MME in points (perception max 2000, cognition max 800; the synthetic suite has 6 perception and 1 "
             "cognition subtask), everything else percent; POPE is the mean F1 over its three splits; MMAvg = mean of "
             "the seven sets (MME excluded), as the paper defines it. In parentheses: the paper's Table 1 value, only "
             "for runs of the paper's stack. 'active/inst.': trainable parameters one instance uses (r of E factors). "
             "Seen: fresh instances of the training tasks, mean of the per-task accuracies (Table 2's AVG)."]
    return "\n".join(lines + notes) + "\n"


def plots(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)

    def grouped_bars(names: list[str], value, figsize, ylabel: str, title: str, path: Path) -> None:
        """One group of bars per name, one bar per run (``value(row, name)``)."""
        fig, ax = plt.subplots(figsize=figsize)
        width = 0.8 / max(1, len(rows))
        for i, r in enumerate(rows):
            ax.bar([j + i * width for j in range(len(names))], [value(r, n) for n in names], width, label=r["run"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    sets = [*SEVEN, "cvbench"]
    grouped_bars(sets, lambda r, s: r[s] or 0, (max(8, 1.2 * len(sets) * max(1, len(rows)) / 2), 4), "score (%)",
                 "Zero-shot held-out sets", out / "datasets.png")
    subtasks = sorted({s for r in rows for s in r["_mme_subtasks"]})
    if subtasks:
        grouped_bars(subtasks, lambda r, s: r["_mme_subtasks"].get(s, {}).get("score", 0),
                     (max(8, len(subtasks) * 1.1), 4), "acc + acc+ (max 200)", "MME subtasks",
                     out / "mme_subtasks.png")

    pts = [(r["trainable"], r["active"], r["mmavg"], r["run"]) for r in rows if r["trainable"] and r["mmavg"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4))
        for trainable, active, score, name in pts:
            ax.scatter(trainable, score, marker="o")
            ax.scatter(active, score, marker="x", color="gray")
            ax.annotate(name, (trainable, score), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (o) / active per instance (x)")
        ax.set_ylabel("MMAvg (%)")
        ax.set_title("Is the gain just more parameters?")
        fig.tight_layout()
        fig.savefig(out / "params_vs_mmavg.png", dpi=120)
        plt.close(fig)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated run directories")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.csv, results.md and plots/")
    args = parser.parse_args(argv)
    rows = [read_run(r) for r in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    fields = ["run", "method", "E", "r", "variant", "trainable", "total", "active", *COLUMNS, "git_commit",
              "adapter_config"]
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows)
    (args.out / "results.md").write_text(table)
    plots(rows, args.out / "plots")
    print(table)
    print(f"wrote {args.out / 'results.csv'}, {args.out / 'results.md'} and {args.out / 'plots'}/")
    return rows


if __name__ == "__main__":
    main()
