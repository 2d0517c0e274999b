"""Gradient-based task interference between training tasks (docs/method.md#task-interference), for LoRA A and
LoRA B.

For tasks i, j and one parameter group θ (the A or the B factors of one module type at one decoder layer):

    g(x)          = ∇_θ L(x)                                        gradient of one sample (or micro-batch)
    Δ_j L_i(x_i) ≈ λ · E_{x_j}[ (g(x_j) / ‖g(x_j)‖)ᵀ g(x_i) ]       first-order change of L_i(x_i) when θ takes a
                                                                    normalised step of size λ along task j's gradient
    I_{i,j}      = E_{x_i}[ Δ_j L_i(x_i) / Δ_i L_i(x_i) ]           λ cancels; I_{i,i} = 1 exactly

Row i is the task affected, column j the task whose update is applied. I_{i,j} < 0: a step that helps task j
increases task i's loss (conflicting gradients); I_{i,j} > 1: task j's step helps task i more than i's own does.
Per-sample ratios make entries large when Δ_i L_i(x_i) is small; the report counts samples whose own-task
term is <= 0 (their ratio has its sign flipped).

Groups (``MODULE_TYPES``): ``mlp`` = gate/up/down projections, ``attn`` = q/k/v/o, as in the paper's two panels.
For LoRA θ_A is the concatenation of the ``lora_a`` [r, d_in] of the group's modules, θ_B of ``lora_b``
[r, d_out]. For MixLoRA θ is the whole pools ``lora_a`` [E, d_in] / ``lora_b`` [E, d_out]: each instance
selects r rows per module, so only those rows receive gradient, and two instances with disjoint selections
have orthogonal gradients (I = 0 between them): per-instance selection itself reduces interference.

A fresh adapter has B = 0, so ∂L/∂A = 0 and the A matrices are undefined (a clear error says so); measure a
trained run, or give B random values (``mixlora.analysis.randomize_lora_b``) for smoke runs.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mixlora.analysis import (adapted_layers, default_image_folder, load_records, resolve_layers, sample_per_task,
                              short_task)
from mixlora.options import check_choice

MODULE_TYPES: dict[str, tuple[str, ...]] = {
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
}
PARTS: dict[str, str] = {"A": "lora_a", "B": "lora_b"}
# Whether Δ_i L_i(x) averages over task i's samples including x itself ("include", the formula as written; with
# the same sample set for both roles) or leaves x out ("exclude", an unbiased own-task estimate; needs >= 2
# samples per task).
SELF_PAIRS = ("include", "exclude")
FORMULA = ("I[i][j] = mean over samples x of task i of D_j(x) / D_i(x), D_k(x) = mean over samples y of task k "
           "of g(x) . g(y) / |g(y)|, g = gradient of the sample's loss w.r.t. the parameter group")


@dataclass
class Interference:
    """One interference matrix. ``values[i, j]`` = I_{tasks[i], tasks[j]} (float64 [M, M]); ``samples[i]`` =
    gradients of task i; ``nonpositive_self[i]`` = how many of them have Δ_i L_i(x) <= 0."""

    values: np.ndarray
    tasks: list[str]
    samples: list[int]
    nonpositive_self: list[int]


def interference_matrix(grads: torch.Tensor | np.ndarray, labels: Sequence[str], tasks: Optional[Sequence[str]] = None,
                        self_pairs: str = "include") -> Interference:
    """The interference matrix from per-sample gradients (see the module docstring for the formula).

    Args:
        grads: [N, P], row k = ∇_θ L(x_k) of sample (or micro-batch) k; computed in float64.
        labels: N task names, ``labels[k]`` = task of row k.
        tasks: row/column order (default: order of first appearance in ``labels``).
        self_pairs: ``"include"`` | ``"exclude"`` (``SELF_PAIRS``).
    """
    check_choice("self_pairs", self_pairs, SELF_PAIRS)
    g = torch.as_tensor(grads).detach().cpu().to(torch.float64)
    labels = list(labels)
    if g.dim() != 2 or g.shape[0] != len(labels):
        raise ValueError(f"grads must be [N, P] with N = len(labels) = {len(labels)}, got shape {tuple(g.shape)}")
    tasks = list(dict.fromkeys(labels)) if tasks is None else list(tasks)
    unknown = sorted(set(labels) - set(tasks))
    absent = [t for t in tasks if t not in labels]
    if unknown or absent:
        raise ValueError(f"labels and tasks disagree: labels not in tasks {unknown}, tasks without samples {absent}")
    if not bool(torch.isfinite(g).all()):
        bad = sorted({labels[k] for k in (~torch.isfinite(g)).any(dim=1).nonzero().flatten().tolist()})
        raise ValueError(f"non-finite gradients for task(s) {bad}; check the loss (lower the learning rate of the run "
                         "or use float32)")
    norms = g.norm(dim=1)
    zero = (norms == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(
            f"{len(zero)} of {len(labels)} gradients are exactly zero (first: sample {zero[0]}, task "
            f"{labels[zero[0]]!r}), so their direction is undefined. For LoRA/MixLoRA A this happens when B = 0 "
            "(an untrained adapter): measure a trained run, or randomise B for a smoke run (--b-init-std).")
    index = torch.tensor([tasks.index(t) for t in labels])
    member = torch.nn.functional.one_hot(index, len(tasks)).to(torch.float64)  # [N, M]
    dots = g @ (g / norms[:, None]).T  # dots[a, b] = g_a · ĝ_b
    counts = member.sum(dim=0).expand(len(labels), -1).clone()  # [N, M] samples averaged per (x, task)
    if self_pairs == "exclude":
        dots.fill_diagonal_(0.0)
        counts -= member
        lonely = [tasks[j] for j in range(len(tasks)) if counts[:, j].min() == 0]
        if lonely:
            raise ValueError(f"task(s) {lonely} have a single gradient; self_pairs='exclude' needs at least two per "
                             "task (raise n, or lower the micro-batch size)")
    delta = (dots @ member) / counts  # [N, M]: Δ_j L(x_a) / λ
    own = delta[torch.arange(len(labels)), index]
    if bool((own == 0).any()):
        k = int((own == 0).nonzero()[0])
        raise ValueError(f"sample {k} (task {labels[k]!r}) has Δ_i L_i(x) = 0 exactly; the ratio is undefined")
    ratio = delta / own[:, None]
    values = np.stack([ratio[index == i].mean(dim=0).numpy() for i in range(len(tasks))])
    return Interference(values=values, tasks=tasks, samples=[int((index == i).sum()) for i in range(len(tasks))],
                        nonpositive_self=[int(((index == i) & (own <= 0)).sum()) for i in range(len(tasks))])


# ---------------------------------------------------------------------------------------------- gradients of a model
GroupKey = tuple[int, str, str]  # (layer, module type, part)


def parameter_groups(llm: nn.Module, layers: Sequence[int], module_types: Sequence[str] = ("mlp", "attn"),
                     parts: Sequence[str] = ("A", "B")) -> dict[GroupKey, list[tuple[str, nn.Parameter]]]:
    """{(layer, type, part): [(parameter name, parameter)]} of the adapters of ``llm`` (LoRA or MixLoRA).

    Groups that hold no adapter (e.g. only attention adapted) are left out; an empty result is an error.
    """
    from mixlora.inject import adapter_modules, layer_index

    for t in module_types:
        check_choice("module type", t, tuple(MODULE_TYPES))
    for p in parts:
        check_choice("part", p, tuple(PARTS))
    modules = adapter_modules(llm)
    if not modules:
        raise ValueError("the model holds no LoRA/MixLoRA adapters; inject them first or pass a run directory")
    groups: dict[GroupKey, list[tuple[str, nn.Parameter]]] = {}
    for name, module in sorted(modules.items()):
        layer = layer_index(name)
        leaf = name.rsplit(".", 1)[-1]
        kind = next((t for t in module_types if leaf in MODULE_TYPES[t]), None)
        if layer is None or layer not in layers or kind is None:
            continue
        for part in parts:
            attr = PARTS[part]
            groups.setdefault((layer, kind, part), []).append((f"{name}.{attr}", getattr(module, attr)))
    if not groups:
        wanted = {t: MODULE_TYPES[t] for t in module_types}
        raise ValueError(f"no adapter in layers {list(layers)} belongs to the module types {wanted}")
    return dict(sorted(groups.items()))


def collect_gradients(model: nn.Module, batches: Iterable[tuple[str, dict]],
                      groups: dict[GroupKey, list[tuple[str, nn.Parameter]]], total: Optional[int] = None,
                      progress: bool = True) -> tuple[dict[GroupKey, torch.Tensor], list[str]]:
    """Flattened gradient of each batch's mean loss w.r.t. each parameter group.

    ``batches``: (task, training batch from ``TrainingCollator``) pairs. The forward and the backward run inside
    ``model.routing(batch["routing_mask"])`` (gradient checkpointing re-runs forwards during backward). The model
    is put in eval mode (no dropout) and the groups' ``requires_grad`` is restored afterwards.
    Returns ({key: float32 [N, P_key] on CPU}, [task of each row]).
    """
    params: list[nn.Parameter] = []
    position: dict[int, int] = {}
    for named in groups.values():
        for _, p in named:
            if id(p) not in position:
                position[id(p)] = len(params)
                params.append(p)
    device = next(model.parameters()).device
    flags = [p.requires_grad for p in params]
    was_training = model.training
    rows: dict[GroupKey, list[torch.Tensor]] = {key: [] for key in groups}
    labels: list[str] = []
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        for task, batch in tqdm(batches, total=total, desc="per-sample gradients", disable=not progress):
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
            with model.routing(batch["routing_mask"].to(device)):
                loss = model(**inputs).loss
                if not bool(torch.isfinite(loss)):
                    raise ValueError(f"loss of task {task!r}, records {batch.get('index')} is {float(loss)}: the "
                                     "samples have no supervised token, or the model is numerically broken")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for key, named in groups.items():
                flat = []
                for _, p in named:
                    grad = grads[position[id(p)]]
                    flat.append((torch.zeros_like(p) if grad is None else grad).detach().reshape(-1).float().cpu())
                rows[key].append(torch.cat(flat))
            labels.append(task)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    if not labels:
        raise ValueError("no batches to measure")
    return {key: torch.stack(r) for key, r in rows.items()}, labels


@dataclass
class InterferenceReport:
    """Interference matrices per (layer, module type, part) and how they were measured."""

    tasks: list[str]
    matrices: dict[GroupKey, Interference]
    num_params: dict[GroupKey, int]
    self_pairs: str
    micro_batch: int
    samples: dict[str, list[int]] = field(default_factory=dict)  # task -> record positions in the source file
    info: dict[str, Any] = field(default_factory=dict)  # source file, adapter config, seed, ...

    def to_json(self) -> dict:
        """``{"formula", "tasks", "self_pairs", "micro_batch", "samples", "info", "matrices": {layer: {type:
        {part: {"values": [[M x M]], "num_params", "gradients": {task: n}, "nonpositive_self": {task: n}}}}}}``."""
        matrices: dict[str, dict] = {}
        for (layer, kind, part), m in self.matrices.items():
            matrices.setdefault(str(layer), {}).setdefault(kind, {})[part] = {
                "values": m.values.tolist(),
                "num_params": self.num_params[(layer, kind, part)],
                "gradients": dict(zip(m.tasks, m.samples)),
                "nonpositive_self": dict(zip(m.tasks, m.nonpositive_self)),
            }
        return {"formula": FORMULA, "rows": "task i (affected)", "columns": "task j (whose update is applied)",
                "tasks": self.tasks, "self_pairs": self.self_pairs, "micro_batch": self.micro_batch,
                "samples": self.samples, "info": self.info, "matrices": matrices}


def measure_interference(model: nn.Module, dataset, positions: dict[str, list[int]], layers: Sequence[int],
                         pad_token_id: int, micro_batch: int = 1, module_types: Sequence[str] = ("mlp", "attn"),
                         parts: Sequence[str] = ("A", "B"), self_pairs: str = "include",
                         progress: bool = True) -> InterferenceReport:
    """Interference matrices of ``model`` (a ``LlavaMixModel`` with adapters) on items of ``dataset``.

    Args:
        dataset: training items (``ConversationDataset``: input_ids, labels, pixel_values, task_name, index).
        positions: {task: dataset positions}; each task's positions are cut into micro-batches of ``micro_batch``
            consecutive items, one gradient each.
        layers: decoder-layer indices; module_types ⊆ {"mlp", "attn"}; parts ⊆ {"A", "B"}.
    """
    from mixlora.data.collator import TrainingCollator

    check_choice("self_pairs", self_pairs, SELF_PAIRS)
    if not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive integer, got {micro_batch!r}")
    groups = parameter_groups(model.llm, layers, module_types, parts)
    collate = TrainingCollator(pad_token_id)
    chunks = [(task, pos[k:k + micro_batch]) for task, pos in positions.items()
              for k in range(0, len(pos), micro_batch)]

    def batches():
        for task, chunk in chunks:
            items = [dataset[p] for p in chunk]
            wrong = [(p, it["task_name"]) for p, it in zip(chunk, items) if it["task_name"] != task]
            if wrong:
                raise ValueError(f"dataset positions {wrong} do not belong to task {task!r}")
            yield task, collate(items)

    grads, labels = collect_gradients(model, batches(), groups, total=len(chunks), progress=progress)
    tasks = list(positions)
    matrices = {key: interference_matrix(g, labels, tasks, self_pairs) for key, g in grads.items()}
    return InterferenceReport(tasks=tasks, matrices=matrices, num_params={k: int(g.shape[1]) for k, g in grads.items()},
                              self_pairs=self_pairs, micro_batch=micro_batch)


def interference_on_records(stack, data: str | Path, tasks: Sequence[str], layers: str | Sequence[int], n: int = 8,
                            seed: int = 0, micro_batch: int = 1, image_folder: Optional[str | Path] = None,
                            template: str = "vicuna_v1", max_length: int = 2048,
                            module_types: Sequence[str] = ("mlp", "attn"), parts: Sequence[str] = ("A", "B"),
                            self_pairs: str = "include", progress: bool = True) -> InterferenceReport:
    """The driver: sample ``n`` records per task of a Vision-Flan JSON (seeded), load them with
    ``ConversationDataset`` (strict: a bad or over-long sampled record is an error) and measure.

    ``stack``: ``mixlora.build.Stack`` (from ``build_stack``/``load_run`` or ``mixlora.analysis.fresh_stack``).
    ``layers``: indices or a spec such as ``"0,-1"`` (negative = counted from the last adapted layer).
    """
    from mixlora.data.dataset import ConversationDataset

    data = Path(data)
    records = load_records(data)
    picked = sample_per_task(records, list(tasks), n, seed, source=str(data))
    layer_list = resolve_layers(layers, adapted_layers(stack.model.llm))
    folder = Path(image_folder) if image_folder is not None else default_image_folder(data)
    with tempfile.TemporaryDirectory(prefix="mixlora-interference-") as tmp:
        subset = [records[i] for task in tasks for i in picked[task]]
        subset_path = Path(tmp) / "samples.json"
        subset_path.write_text(json.dumps(subset))
        dataset = ConversationDataset(str(subset_path), stack.tokenizer, stack.image_processor,
                                      stack.model.num_image_tokens, image_folder=str(folder), template=template,
                                      max_length=max_length, overlong="error", on_error="raise",
                                      cache_dir=str(Path(tmp) / "cache"))
        if len(dataset) != len(subset):
            raise ValueError(f"{data}: {len(subset) - len(dataset)} sampled records were dropped while loading; "
                             f"see {dataset.report()['problems'][:3]}")
        positions, start = {}, 0
        for task in tasks:
            positions[task] = list(range(start, start + len(picked[task])))
            start += len(picked[task])
        report = measure_interference(stack.model, dataset, positions, layer_list, stack.tokenizer.pad_token_id,
                                      micro_batch, module_types, parts, self_pairs, progress)
    report.samples = picked
    report.info.update({"data": str(data), "image_folder": str(folder), "template": template, "n": n, "seed": seed,
                        "layers": layer_list})
    config = getattr(stack.model.llm, "mixlora_adapter_config", None)
    if config is not None:
        report.info["adapter"] = config.to_dict()
    return report


# ---------------------------------------------------------------------------------------------- plots
def plot_interference(report: dict, out_dir: str | Path, prefix: str = "interference") -> list[Path]:
    """One PNG per module type (``{prefix}_{type}.png``): a grid of heatmaps, rows = layers, columns = parts,
    each cell annotated with its value, diverging colours centred at 0 (red = conflicting). ``report`` is
    :meth:`InterferenceReport.to_json` (so saved JSON files can be re-plotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [short_task(t) for t in report["tasks"]]
    m = len(labels)
    layers = sorted(report["matrices"], key=int)
    kinds = sorted({k for layer in layers for k in report["matrices"][layer]})
    paths = []
    for kind in kinds:
        parts = sorted({p for layer in layers for p in report["matrices"][layer].get(kind, {})})
        side = 1.2 + 0.55 * m
        fig, axes = plt.subplots(len(layers), len(parts), figsize=(side * len(parts) + 1.5, side * len(layers)),
                                 squeeze=False)
        for r, layer in enumerate(layers):
            for c, part in enumerate(parts):
                ax = axes[r][c]
                cell = report["matrices"][layer].get(kind, {}).get(part)
                if cell is None:
                    ax.set_axis_off()
                    continue
                values = np.asarray(cell["values"], dtype=float)
                off = values[~np.eye(m, dtype=bool)] if m > 1 else np.array([0.0])
                bound = max(1.0, float(np.abs(off).max()))
                im = ax.imshow(values, cmap="RdBu", norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound))
                for i in range(m):
                    for j in range(m):
                        ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if abs(values[i, j]) > 0.6 * bound else "black")
                ax.set_xticks(range(m), labels, rotation=60, ha="right", fontsize=7)
                ax.set_yticks(range(m), labels, fontsize=7)
                ax.set_title(f"{kind.upper()} layer {layer}, LoRA {part}", fontsize=9)
                ax.set_xlabel("task j (update applied)", fontsize=7)
                ax.set_ylabel("task i (affected)", fontsize=7)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        path = out / f"{prefix}_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
