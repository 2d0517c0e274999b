"""Plots and files of the routing analysis (``mixlora.analysis.routing``): usage heatmaps, usage entropy, the
t-SNE of selections, and the JSON files they are drawn from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from mixlora.analysis import short_task

if TYPE_CHECKING:
    from mixlora.analysis.routing import RoutingReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_usage(usage: dict, out_dir: str | Path) -> list[Path]:
    """Per layer ``usage_layer{L}.png``: rows = modules, columns = A / B pools, each a heatmap of the fraction of
    a task's instances that selected each factor (tasks x factors); and ``usage_entropy.png``: normalised usage
    entropy per task (rows) and module (columns), for A and for B. ``usage`` is ``RoutingReport.usage_json()``."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = usage["tasks"]
    labels = [short_task(t) + (" (held-out)" if usage["kind"][t] == "heldout" else "") for t in tasks]
    n = np.array([usage["instances"][t] for t in tasks], dtype=float)[:, None]
    modules = usage["modules"]
    paths = []
    for layer in usage["layers"]:
        names = [m for m in modules if modules[m]["layer"] == layer]
        e = max(modules[m]["num_factors"] for m in names)
        fig, axes = plt.subplots(len(names), 2, squeeze=False, layout="constrained",
                                 figsize=(2 * (2.5 + 0.22 * e) + 2, len(names) * (0.8 + 0.22 * len(tasks))))
        for r, m in enumerate(names):
            for c, part in enumerate(("A", "B")):
                ax = axes[r][c]
                frac = np.array([modules[m][part]["counts"][t] for t in tasks], dtype=float) / n
                im = ax.imshow(frac, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
                ax.set_title(f"{m.split('.', 2)[-1] if m.count('.') > 2 else m} - {part}", fontsize=8)
                ax.set_yticks(range(len(tasks)), labels if c == 0 else [""] * len(tasks), fontsize=6)
                ax.set_xticks(range(modules[m]["num_factors"]))
                ax.tick_params(axis="x", labelsize=5)
        fig.colorbar(im, ax=axes, fraction=0.02, label="fraction of instances selecting the factor")
        fig.suptitle(f"Factor usage per task, layer {layer}", fontsize=10)
        path = out / f"usage_layer{layer}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    names = list(modules)
    cols = [f"L{modules[m]['layer']}.{m.rsplit('.', 1)[-1].replace('_proj', '')}" for m in names]
    fig, axes = plt.subplots(1, 2, squeeze=False, layout="constrained",
                             figsize=(2 * (2.5 + 0.45 * len(names)) + 1, 1.5 + 0.3 * len(tasks)))
    for c, part in enumerate(("A", "B")):
        ax = axes[0][c]
        h = np.array([[modules[m][part]["normalized_entropy"][t] for m in names] for t in tasks])
        im = ax.imshow(h, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
        for i in range(h.shape[0]):
            for j in range(h.shape[1]):
                ax.text(j, i, f"{h[i, j]:.2f}", ha="center", va="center", fontsize=5,
                        color="white" if h[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=70, fontsize=6)
        ax.set_yticks(range(len(tasks)), labels if c == 0 else [""] * len(tasks), fontsize=6)
        ax.set_title(f"usage entropy / ln E, pool {part}", fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.02)
    path = out / "usage_entropy.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths + [path]


def plot_tsne(report: RoutingReport, out_dir: str | Path) -> list[Path]:
    """Per layer ``tsne_layer{L}.png``: one point per instance, training tasks as circles, held-out sets as
    crosses in the lighter shade of the training task they are paired with (``report.pairs``)."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tab = list(plt.get_cmap("tab20").colors)  # colours 2k / 2k+1 are a dark / light pair
    extra = list(plt.get_cmap("tab20b").colors) + list(plt.get_cmap("tab20c").colors)
    colour, marker, legend = {}, {}, {}
    order = [t for t in dict.fromkeys(p for p in report.pairs.values() if p)] + \
            [t for t in report.train_tasks if t not in report.pairs.values()]
    k_extra = 0
    for k, t in enumerate(order):
        if t in report.pairs.values() and k < 10:
            colour[t] = tab[2 * k]
        else:
            colour[t], k_extra = extra[k_extra % len(extra)], k_extra + 1
        marker[t], legend[t] = "o", short_task(t)
    heldout_markers = ["X", "P", "^", "s", "D", "v"]
    sharing: dict[Optional[str], int] = {}
    for h in report.heldout_tasks:
        p = report.pairs.get(h)
        k = order.index(p) if p in order else None
        if p is not None and k is not None and k < 10:
            colour[h] = tab[2 * k + 1]
        else:
            colour[h], k_extra = extra[k_extra % len(extra)], k_extra + 1
        marker[h] = heldout_markers[sharing.get(p, 0) % len(heldout_markers)]
        sharing[p] = sharing.get(p, 0) + 1
        legend[h] = f"{h} (held-out) ~ {short_task(p) if p else 'unpaired'}"
    labels = np.asarray(report.selections.tasks)
    paths = []
    for layer, coords in report.tsne.items():
        fig, ax = plt.subplots(figsize=(8.5, 6))
        for t in order + report.heldout_tasks:
            pts = coords[labels == t]
            ax.scatter(pts[:, 0], pts[:, 1], s=28 if marker[t] == "o" else 46, c=[colour[t]], marker=marker[t],
                       edgecolors="black" if marker[t] != "o" else "none", linewidths=0.4, label=legend[t])
        ax.set_title(f"t-SNE of factor selections (Jaccard, pools {report.parts.upper()}), layer {layer}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        path = out / f"tsne_layer{layer}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_routing_outputs(report: RoutingReport, out_dir: str | Path) -> list[Path]:
    """usage.json, nearest.json, tsne_layer{L}.json and every PNG into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    usage = report.usage_json()
    for name, obj in (("usage.json", usage), ("nearest.json", report.nearest_json())):
        (out / name).write_text(json.dumps(obj, indent=1))
        written.append(out / name)
    for layer in report.tsne:
        path = out / f"tsne_layer{layer}.json"
        path.write_text(json.dumps(report.tsne_json(layer)))
        written.append(path)
    written += plot_usage(usage, out)
    written += plot_tsne(report, out)
    return written
