"""Aggregate scripts/mini_table.sh runs into the mini table (mean +- std over seeds) and check the paper's claims.

    python scripts/mini_table.py runs/mini/runs --out runs/mini [--command "..."]

Run folders are named ``<row>_s<seed>`` (e.g. ``mixc_e8_r4_s1``); each must hold ``eval/metrics.json``
(``python eval.py run=DIR``). Writes ``mini_table.json`` (every run and every row), ``mini_table.csv``,
``mini_table.md`` (the table, then one line per claim) and ``plots/mini_table.png``.

Claims (paper §5), each compared on the seen-task average and on MMAvg, row means over seeds:
  - MixLoRA > LoRA at equal rank: mixc_e{E}_r{r} vs lora_r{r};
  - instance routing > random routing: mixc_e{E}_r4 vs randc_e{E}_r4;
  - CFS helps: mixc_e{E}_r4 vs ifsc_e{E}_r4.
Verdict per comparison: "holds" if the difference of means exceeds 2 standard errors
(sqrt(s_a^2/n_a + s_b^2/n_b)), "reversed" if it is below -2 standard errors, else "not distinguishable".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregate import read_run  # noqa: E402  (scripts/aggregate.py: one run directory -> one row)

METRICS = {"seen": "Seen", "mmavg": "MMAvg", "mme_total": "MME", "cvbench": "CV-Bench", "pope": "POPE F1"}
NAME = re.compile(r"^(?P<row>.+)_s(?P<seed>\d+)$")


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(runs_dir: Path, skip_incomplete: bool = False) -> tuple[list[dict], dict[str, dict]]:
    runs, rows = [], {}
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir() and NAME.match(p.name)) if runs_dir.is_dir() else []
    if not folders:
        sys.exit(f"mini_table.py: no <row>_s<seed> run folders in {runs_dir}; run scripts/mini_table.sh first")
    if skip_incomplete:
        missing = [f.name for f in folders if not (f / "eval" / "metrics.json").is_file()]
        if missing:
            print(f"mini_table.py: skipping runs without eval/metrics.json: {', '.join(missing)}", file=sys.stderr)
        folders = [f for f in folders if f.name not in missing]
    for folder in folders:
        m = NAME.match(folder.name)
        r = read_run(folder)
        r.pop("_mme_subtasks", None)
        r.update(row=m["row"], seed=int(m["seed"]))
        runs.append(r)
    for r in runs:
        rows.setdefault(r["row"], []).append(r)
    table = {}
    for name, members in rows.items():
        first = members[0]
        entry = {"row": name, "method": first["method"], "E": first["E"], "r": first["r"], "variant": first["variant"],
                 "seeds": sorted(m["seed"] for m in members), "trainable": first["trainable"],
                 "active": first["active"], "adapter_config": first["adapter_config"],
                 "git_commits": sorted({str(m["git_commit"]) for m in members})}
        for key in METRICS:
            entry[key], entry[key + "_std"] = mean_std([m[key] for m in members])
        table[name] = entry
    return runs, table


def compare(table: dict, a: str, b: str, metric: str) -> dict | None:
    if a not in table or b not in table or table[a][metric] is None or table[b][metric] is None:
        return None
    na, nb = len(table[a]["seeds"]), len(table[b]["seeds"])
    diff = table[a][metric] - table[b][metric]
    se = math.sqrt(table[a][metric + "_std"] ** 2 / na + table[b][metric + "_std"] ** 2 / nb)
    verdict = "holds" if diff > 2 * se else "reversed" if diff < -2 * se else "not distinguishable"
    return {"a": a, "b": b, "metric": metric, "diff": diff, "se": se, "verdict": verdict}


def claims(table: dict) -> list[dict]:
    out = []
    for metric in ("seen", "mmavg"):
        for r in (2, 4, 8):
            for e in (8, 16):
                c = compare(table, f"mixc_e{e}_r{r}", f"lora_r{r}", metric)
                if c:
                    out.append({"claim": "MixLoRA > LoRA at equal rank", **c})
        for e in (8, 16):
            for claim, other in (("instance routing > random routing", f"randc_e{e}_r4"),
                                 ("CFS helps (IFS+CFS > IFS only)", f"ifsc_e{e}_r4")):
                c = compare(table, f"mixc_e{e}_r4", other, metric)
                if c:
                    out.append({"claim": claim, **c})
    return out


def fmt(mean, std) -> str:
    return "" if mean is None else f"{mean:.2f} ± {std:.2f}"


def markdown(table: dict, checks: list[dict], command: str | None) -> str:
    lines = ["# Mini table (tiny CPU stack, synthetic suite)", ""]
    if command:
        lines += ["Command: `" + command + "`", ""]
    header = ["row", "method", "E", "r", "variant", "seeds", "trainable", "active/inst.", *METRICS.values()]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in table.values():
        lines.append("| " + " | ".join([e["row"], e["method"], str(e["E"] or ""), str(e["r"] or ""), e["variant"],
                                         str(len(e["seeds"])), str(e["trainable"]), str(e["active"]),
                                         *[fmt(e[k], e[k + "_std"]) for k in METRICS]]) + " |")
    lines += ["", "Mean ± sample std over seeds. Seen: mean per-task accuracy on fresh instances of the 28 training "
              "tasks (Table 2's AVG); MMAvg: mean of the seven held-out sets (POPE F1); MME in points.", "",
              "## The paper's claims at this scale", "",
              "| claim | A | B | metric | A − B | 2 SE | verdict |", "|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {METRICS[c['metric']]} | {c['diff']:+.2f} | "
                     f"{2 * c['se']:.2f} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(names) + 4), 4.5))
    for ax, key in zip(axes, ("seen", "mmavg")):
        means = [table[n][key] or 0.0 for n in names]
        stds = [table[n][key + "_std"] or 0.0 for n in names]
        colors = ["tab:gray" if n.startswith("lora") else "tab:orange" if n.startswith("mixrel") else
                  "tab:red" if n.startswith("rand") else "tab:green" if n.startswith("ifs") else "tab:blue"
                  for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(f"{METRICS[key]} (%)")
        ax.set_title(f"{METRICS[key]}, mean ± std over seeds")
    fig.tight_layout()
    (out / "plots").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "plots" / "mini_table.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="folder of <row>_s<seed> run directories")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--command", default=None, help="the command that produced the runs (recorded in the outputs)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="leave out runs not evaluated yet (a table while scripts/mini_table.sh is still running)")
    a = p.parse_args(argv)
    runs, table = collect(a.runs, a.skip_incomplete)
    checks = claims(table)
    a.out.mkdir(parents=True, exist_ok=True)
    result = {"command": a.command, "rows": table, "claims": checks, "runs": runs}
    (a.out / "mini_table.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    fields = ["row", "method", "E", "r", "variant", "seeds", "trainable", "active",
              *[k for m in METRICS for k in (m, m + "_std")], "git_commits"]
    with open(a.out / "mini_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for e in table.values():
            w.writerow({**e, "seeds": " ".join(map(str, e["seeds"])), "git_commits": " ".join(e["git_commits"])})
    text = markdown(table, checks, a.command)
    (a.out / "mini_table.md").write_text(text)
    if not a.no_plot:
        plot(table, a.out)
    print(text)
    print(f"wrote {a.out}/mini_table.{{json,csv,md}}" + ("" if a.no_plot else " and plots/mini_table.png"))
    return result


if __name__ == "__main__":
    main()
