"""The testbed's report: per-row accuracies with standard errors, interference, claim verdicts, JSON and plots.

Accuracy of a run on a split = the mean over tasks of the task accuracy (percent), as the paper's seen-task
average; a family's accuracy = the mean over its tasks (name / next / flip by default). A specialist row's "run"
for a seed is its one-task runs, each contributing its own task.

Standard errors of a row mean: over seeds, ``std(ddof=1) / sqrt(n)`` (training variance: initialisation, dropout,
data order) when the row has >= 2 seeds; with one seed, the test-sampling error of that run,
``sqrt(sum_t p_t (1 - p_t) / n_t) / T`` over its T tasks (a lower bound on the error of a one-seed result, said in
the table). A difference of two rows has ``SE = sqrt(SE_a^2 + SE_b^2)``; a verdict needs ``|diff| > 2 SE``.

Interference in a family = specialist accuracy minus joint LoRA r2 accuracy on that family (seen split): how much
sharing one low-rank adapter across conflicting mappings costs.

A table made in several places (two machines, or a row added after the others' run folders are gone) is one
report: ``merge`` takes earlier report JSONs of the same tasks, and every row they hold that OUT has not run is
carried over as recorded (marked with ``"from"``); claims and interference are computed over the union, since
they need only each row's mean and SE. A row run in OUT replaces the same row of a merged file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Optional, Sequence

from .recipe import RECORD, SPLITS
from .rows import BY_NAME

# Comparisons reported as verdicts: (claim, row a, row b); "a > b" is the claim's direction.
CLAIMS = (
    ("MixLoRA beats LoRA at equal rank (paper Table 1)", "mixc_e8_r2_instr", "lora_r2"),
    ("MixLoRA beats LoRA at equal trainable parameters", "mixc_e8_r2_instr", "lora_r8"),
    ("MixLoRA beats LoRA at equal trainable parameters, LoRA's rate scaled by 2/8", "mixc_e8_r2_instr",
     "lora_r8_lr_scaled"),
    ("Instance routing beats random routing (the paper's routing ablation)", "mixc_e8_r2_instr", "rand_e8_r2"),
    ("CFS beats IFS alone (the paper's CFS ablation)", "mixc_e8_r2_instr", "ifs_e8_r2_instr"),
    ("Routing on the instruction beats routing on the whole prompt", "mixc_e8_r2_instr", "mixc_e8_r2_prompt"),
    ("Learned (straight-through) routers beat frozen ones", "st_e8_r2_instr", "mixc_e8_r2_instr"),
    ("Learned routers, router input detached, beat frozen ones", "stdet_e8_r2_instr", "mixc_e8_r2_instr"),
    ("Corrected MixLoRA beats the released layer (same E, r)", "mixc_e8_r2_prompt", "mixrel_e8_r2"),
    # The released gap one difference at a time (instruction routing throughout; rows.py):
    ("The paper's CFS formula beats the released one", "mixc_e8_r2_instr", "mixc_e8_r2_instr_cfsrel"),
    ("Reusing the prefill routing while decoding beats re-routing each step (released formula)",
     "mixc_e8_r2_instr_cfsrel", "mixrel_e8_r2_instr_alpha2r"),
    ("The multiplier 2 beats the released 2E/r (released layer)", "mixrel_e8_r2_instr_alpha2r",
     "mixrel_e8_r2_instr"),
)
INTERFERENCE_REFERENCE = ("spec_lora_r2", "lora_r2")


def family_of(task: str) -> str:
    """``"testbed+size_flip"`` -> ``"size"`` (task names are ``<prefix>+<family>_<mapping>``)."""
    return task.split("+", 1)[-1].split("_", 1)[0]


def _split_scores(run_dir: Path, split: str) -> dict:
    path = run_dir / "eval" / split / "metrics.json"
    return json.loads(path.read_text())["scores"]["per_task"]


def collect(out: Path) -> dict:
    """{row: {seed: {split: {task: {"accuracy", "correct", "count"}}}}} from every finished run under OUT/runs."""
    table: dict = {}
    for record_path in sorted((out / "runs").rglob(RECORD)):
        record = json.loads(record_path.read_text())
        run_dir = record_path.parent
        per_split = {split: _split_scores(run_dir, split) for split in SPLITS}
        if record["task"] is not None:  # a specialist's run counts for its own task only
            per_split = {s: {record["task"]: v[record["task"]]} for s, v in per_split.items()}
        seed_entry = table.setdefault(record["row"], {}).setdefault(record["seed"], {s: {} for s in SPLITS})
        for split in SPLITS:
            seed_entry[split].update(per_split[split])
    return table


def _binomial_se(per_task: dict) -> float:
    terms = [(v["accuracy"] / 100) * (1 - v["accuracy"] / 100) / max(v["count"], 1) for v in per_task.values()]
    return 100 * math.sqrt(sum(terms)) / len(terms)


def _stat(values: list[float], fallback_se: float) -> dict:
    n = len(values)
    if n >= 2:
        return {"mean": mean(values), "std": stdev(values), "se": stdev(values) / math.sqrt(n), "se_from": "seeds"}
    return {"mean": values[0], "std": None, "se": fallback_se, "se_from": "test instances (1 seed)"}


def summarize_row(name: str, seeds: dict, tasks: list[str]) -> Optional[dict]:
    """The row's record: description fields, seeds, per split the mean over tasks and its SE, per-family means."""
    complete = {s: v for s, v in seeds.items() if all(set(tasks) <= set(v[split]) for split in SPLITS)}
    if not complete:
        return None
    row = BY_NAME.get(name)
    families = sorted({family_of(t) for t in tasks})
    record = {"row": name, "method": row.method if row else None, "kind": row.kind if row else None,
              "E": row.num_factors if row else None, "r": row.rank if row else None,
              "routing": row.routing if row else None, "variant": row.variant if row else None,
              "seeds": sorted(complete)}
    for split in SPLITS:
        runs = [complete[s][split] for s in sorted(complete)]
        overall = [mean(r[t]["accuracy"] for t in tasks) for r in runs]
        record[split] = _stat(overall, _binomial_se({t: runs[0][t] for t in tasks}))
        record[f"{split}_families"] = {}
        for family in families:
            members = [t for t in tasks if family_of(t) == family]
            values = [mean(r[t]["accuracy"] for t in members) for r in runs]
            record[f"{split}_families"][family] = _stat(values, _binomial_se({t: runs[0][t] for t in members}))
        record[f"{split}_tasks"] = {t: mean(r[t]["accuracy"] for r in runs) for t in tasks}
    return record


def difference(a: dict, b: dict) -> dict:
    diff = a["mean"] - b["mean"]
    se = math.sqrt(a["se"] ** 2 + b["se"] ** 2)
    verdict = "not distinguishable" if abs(diff) <= 2 * se else ("yes" if diff > 0 else "reversed")
    return {"diff": diff, "se": se, "verdict": verdict}


def load_merged(path: Path, tasks: list[str]) -> dict:
    """An earlier report JSON to merge; refused (ValueError) unless it is a report over exactly ``tasks``."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the report to merge {path}: {err}") from err
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        raise ValueError(f"{path} is not a testbed report (no 'rows' list); pass a STEM.json the report wrote")
    if report.get("tasks") != tasks:
        raise ValueError(f"{path} reports the tasks {report.get('tasks')}, this data {tasks}: a merged table "
                         "must score the same tasks (choose the --data it was made on)")
    return report


def build_report(out: Path, tasks: list[str], command: str = "", merge: Sequence[Path] = ()) -> dict:
    raw = collect(out)
    by = {r["row"]: r for r in (summarize_row(n, seeds, tasks) for n, seeds in raw.items()) if r is not None}
    merged, usage = [], None
    for path in merge:
        earlier = load_merged(path, tasks)
        usage = usage or earlier.get("routing_usage")
        carried = [r for r in earlier["rows"] if r["row"] not in by]
        for r in carried:
            by[r["row"]] = {**r, "from": r.get("from", str(path))}
        merged += earlier.get("merged", [])
        merged.append({"file": str(path), "command": earlier.get("command", ""),
                       "rows": [r["row"] for r in carried]})
    order = [n for n in BY_NAME if n in by] + sorted(n for n in by if n not in BY_NAME)
    rows = [by[n] for n in order]
    claims = []
    for claim, a, b in CLAIMS:
        if a in by and b in by:
            claims.append({"claim": claim, "a": a, "b": b,
                           **{split: difference(by[a][split], by[b][split]) for split in SPLITS}})
    interference = {}
    spec, joint = INTERFERENCE_REFERENCE
    if spec in by and joint in by:
        for family, s in by[spec]["seen_families"].items():
            interference[family] = difference(s, by[joint]["seen_families"][family])
    report = {"command": command, "tasks": tasks, "rows": rows, "claims": claims, "interference": interference}
    if merged:
        report["merged"] = merged
    if usage:  # the first merged report's; write_report replaces it with one measured in OUT
        report["routing_usage"] = usage
    return report


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.1f} ± {stat['se']:.1f}"


def markdown(report: dict) -> str:
    rows = report["rows"]
    families = sorted(rows[0]["seen_families"]) if rows else []
    lines = ["# Interference testbed", ""]
    if report.get("command"):
        lines += ["Command: `" + report["command"] + "`", ""]
    lines += [f"Accuracy (%) = mean over the {len(report['tasks'])} tasks; ± is one standard error (over seeds; with one seed, over test "
              "instances). Seen: the training phrasings on new images; unseen: phrasings never trained on.", "",
              "| Row | Seeds | Seen | Unseen | " + " | ".join(f"{f} (seen)" for f in families) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(families)]
    for r in rows:
        fam = " | ".join(_pm(r["seen_families"][f]) for f in families)
        mark = " *" if "from" in r else ""
        lines.append(f"| {r['row']}{mark} | {len(r['seeds'])} | {_pm(r['seen'])} | {_pm(r['unseen'])} | {fam} |")
    if any("from" in r for r in rows):
        lines += ["", "\\* carried from an earlier report, as it recorded the row:"]
        for m in report.get("merged", []):
            if m["rows"]:
                lines.append(f"`{m['file']}` (made by `{m['command']}`): {', '.join(m['rows'])}")
    if report["interference"]:
        lines += ["", "## Interference (specialist LoRA r2 minus joint LoRA r2, seen)", "",
                  "| Family | Difference | 2 SE | Separated |", "|---|---:|---:|---|"]
        for family, d in report["interference"].items():
            lines.append(f"| {family} | {d['diff']:+.1f} | {2 * d['se']:.1f} | "
                         f"{'yes' if abs(d['diff']) > 2 * d['se'] else 'no'} |")
    if report["claims"]:
        lines += ["", "## Claims (a minus b; verdict at 2 SE)", "",
                  "| Claim | a | b | Seen | Unseen |", "|---|---|---|---|---|"]
        for c in report["claims"]:
            cells = [f"{c[s]['diff']:+.1f} (2 SE {2 * c[s]['se']:.1f}): {c[s]['verdict']}" for s in SPLITS]
            lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot_families(report: dict, path: Path) -> Optional[Path]:
    """Grouped bars: one group per family (seen and unseen panels), one bar per row, SE error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    if not rows:
        return None
    families = sorted(rows[0]["seen_families"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(rows) + 4), 4), sharey=True)
    width = 0.8 / len(rows)
    for ax, split in zip(axes, SPLITS):
        for k, r in enumerate(rows):
            stats = [r[f"{split}_families"][f] for f in families]
            xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(families))]
            # tab20: up to 20 distinguishable rows (the default cycle repeats after 10)
            ax.bar(xs, [s["mean"] for s in stats], width, yerr=[s["se"] for s in stats], capsize=2, label=r["row"],
                   color=plt.cm.tab20(k % 20))
        ax.set_xticks(range(len(families)), families)
        ax.set_title(f"{split} phrasings")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (%), mean over the family's tasks")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_usage(usage: dict, path: Path) -> Optional[Path]:
    """Heatmap of factor usage (share of instances choosing each A factor, mean over layers) per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not usage.get("tasks"):
        return None
    tasks = usage["tasks"]
    matrix = [usage["usage"][t] for t in tasks]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(tasks) + 1.5))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(tasks)), [t.split("+")[-1] for t in tasks], fontsize=8)
    ax.set_xlabel("A factor")
    ax.set_title(f"{usage['run']}: share of instances selecting each factor")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, tasks: list[str], command: str = "", usage: Optional[dict] = None,
                 dest: Optional[Path] = None, stem: str = "results", merge: Sequence[Path] = ()) -> dict:
    """Write ``DEST/<stem>.json``, ``DEST/<stem>.md`` and ``DEST/plots/`` (DEST defaults to OUT). Without a
    usage measured in OUT, the first merged report's routing usage is kept."""
    from mixlora.checkpoint import atomic_write

    dest = dest or out
    report = build_report(out, tasks, command, merge)
    usage = report.get("routing_usage") if usage is None else usage
    if usage is not None:
        report["routing_usage"] = usage
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(dest / f"{stem}.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))
    atomic_write(dest / f"{stem}.md", lambda tmp: Path(tmp).write_text(markdown(report)))
    plot_families(report, dest / "plots" / f"{stem}_families.png")
    if usage is not None:
        plot_usage(usage, dest / "plots" / f"{stem}_routing_usage.png")
    return report
