"""Routing analysis of MixLoRA (docs/method.md#routing-analysis): factor usage per task and layer, and the t-SNE
of selections.

Per instance, every MixLoRA module picks r of its E A-factors and r of its E B-factors (``idx_a``, ``idx_b``
[r], read with ``mixlora.last_selections(model.llm)`` after a forward on the prompt). From these:

* **Usage**: counts[task, e] = how many of the task's instances selected factor e (of A or of B) in a module;
  each instance selects r factors, so a row sums to r·n_task. Usage entropy H = -Σ_e p_e ln p_e with
  p = counts / Σ counts, in nats: ln r when a task always selects the same r factors, ln E when usage is uniform
  (``normalized_entropy`` = H / ln E).
* **Selection sets**: at decoder layer L, the set of an instance is the union over the layer's modules of the
  tagged elements (module, "A", e) for its A selections and (module, "B", e) for its B selections (``parts="ab"``;
  ``"a"`` / ``"b"`` keep one pool). Tags keep the A and B indices (and modules) apart, so the set has
  r·(#modules)·(#parts) elements. Stored as an indicator matrix [N, F], F = #modules · E · #parts.
* **Jaccard distance** d(S, T) = 1 - |S ∩ T| / |S ∪ T| (0 for two empty sets); t-SNE runs on the [N, N]
  distance matrix (``TSNE(metric="precomputed")``), as the released code does.
* **Nearest training task** of a held-out task h: the training task t with the smallest mean distance
  mean_{x ∈ h} d(S_x, C_t), where C_t is t's *mean selection set*, the elements selected by at least half of
  t's instances (``linkage="centroid"``); ``linkage="average"`` uses mean_{x ∈ h, y ∈ t} d(S_x, S_y) instead.

Selections are those of generation's prefill: each prompt routes on its own real tokens (``routing_tokens="all"``
never averages the left padding of a batch), so a prompt selects the same factors alone and in any batch. A model
with task routing (``routing_source="task"``) routes each prompt on its task's definition, found under the keys
of ``mixlora.tasks.common.definition_keys``: ``"<name>"`` for a training task or a held-out set such as
``cifar10``, ``"mme/count"`` then ``"mme"`` then ``"count"`` for ``mme/count`` (as eval.py looks up MME's
subtask); every instance of a task then selects the same factors. Plots and output files:
``mixlora.analysis.routing_plots`` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mixlora.analysis.routing_plots import plot_tsne, plot_usage, write_routing_outputs  # noqa: F401 (public here)
from mixlora.options import check_choice

logger = logging.getLogger(__name__)

SELECTION_PARTS = ("ab", "a", "b")
LINKAGES = ("centroid", "average")


# ---------------------------------------------------------------------------------------------- selections
@dataclass
class Selections:
    """Per-instance MixLoRA selections: ``idx_a[m]`` / ``idx_b[m]`` long [N, r] for module m (its name in the
    LLM), ``tasks[k]`` = task of instance k, ``num_factors[m]`` = E of module m."""

    tasks: list[str]
    idx_a: dict[str, torch.Tensor]
    idx_b: dict[str, torch.Tensor]
    num_factors: dict[str, int]

    def modules_at(self, layer: int) -> list[str]:
        from mixlora.inject import layer_index

        return sorted(m for m in self.idx_a if layer_index(m) == layer)

    def layers(self) -> list[int]:
        from mixlora.inject import layer_index

        return sorted({layer_index(m) for m in self.idx_a if layer_index(m) is not None})


def collect_selections(model: nn.Module, batches: Iterable[dict], total: Optional[int] = None,
                       progress: bool = True) -> Selections:
    """Forward each prompt batch without gradients and record every MixLoRA module's selection for its B
    instance rows.

    A batch is a ``GenerationCollator`` batch: input_ids, attention_mask [B_total, L] (left-padded),
    routing_mask, pixel_values [B, ...], task_name [B]; ``instruction_mask`` when the samples carry instruction
    spans; under task routing ``source_rows`` [B_total], the K = B_total - B definition rows after the instances.
    The forward runs inside ``model.routing(routing_mask, source_rows, sequence_mask=attention_mask,
    instruction_mask)``, as ``generate``'s prefill does: ``routing_tokens="all"`` then averages each row's real
    tokens, h̄_b = Σ_t m_bt x_bt / Σ_t m_bt with m = attention_mask, never the padding a longer batch-mate adds, so
    a prompt's selection is the same alone and in any batch (up to float32 rounding of near-ties)."""
    from mixlora.model.llava import instance_rows
    from mixlora.routing_state import last_selections, mixlora_layers

    layers = mixlora_layers(model.llm)
    if not layers:
        raise ValueError("routing analysis needs MixLoRA adapters; this model holds none (LoRA has no routing)")
    task_routed = any(m.routing_source == "task" for _, m in layers)
    device = next(model.parameters()).device
    tasks: list[str] = []
    a_rows: dict[str, list[torch.Tensor]] = {}
    b_rows: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, total=total, desc="routing selections", disable=not progress):
            for _, m in layers:
                m.last_selection = None  # a module that did not run must not report a stale batch
            rows = batch["input_ids"].shape[0]
            source_rows = batch.get("source_rows")
            if task_routed and source_rows is None:
                raise ValueError("the model routes on task definitions (adapter routing_source=task), but the batch "
                                 "has no definition rows: pass definitions={key: text} to analyse_routing "
                                 "(scripts/routing_analysis.py --task-definitions PATH)")
            size = rows if source_rows is None else instance_rows(source_rows)
            instruction = batch.get("instruction_mask")
            context = model.routing(batch["routing_mask"].to(device),
                                    None if source_rows is None else source_rows.to(device),
                                    sequence_mask=batch["attention_mask"].to(device).bool(),
                                    instruction_mask=None if instruction is None else instruction.to(device))
            with torch.no_grad(), context:  # the forward gets no routing arguments, so this context is in force
                model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                      pixel_values=batch["pixel_values"].to(device))
            selected = last_selections(model.llm)
            if len(selected) != len(layers):
                raise RuntimeError(f"only {len(selected)} of {len(layers)} MixLoRA modules ran in the forward")
            for name, (ia, ib) in selected.items():
                if ia.shape[0] != rows:
                    raise RuntimeError(f"{name} selected for {ia.shape[0]} rows in a batch of {rows}")
                a_rows.setdefault(name, []).append(ia[:size].cpu())  # instance rows; definition rows follow
                b_rows.setdefault(name, []).append(ib[:size].cpu())
            tasks.extend(batch["task_name"])
    finally:
        model.train(was_training)
    return Selections(tasks=tasks, idx_a={k: torch.cat(v) for k, v in sorted(a_rows.items())},
                      idx_b={k: torch.cat(v) for k, v in sorted(b_rows.items())},
                      num_factors={n: m.num_factors for n, m in layers})


# ---------------------------------------------------------------------------------------------- usage
def factor_usage(idx: torch.Tensor | np.ndarray, labels: Sequence[str], tasks: Sequence[str],
                 num_factors: int) -> np.ndarray:
    """counts [T, E]: counts[t, e] = number of instances of ``tasks[t]`` whose selection ``idx`` [N, r] holds e."""
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.shape[0] != len(labels):
        raise ValueError(f"idx must be [N, r] with N = len(labels) = {len(labels)}, got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= num_factors):
        raise ValueError(f"selected indices must lie in [0, {num_factors}), got {idx.min()}..{idx.max()}")
    counts = np.zeros((len(tasks), num_factors), dtype=np.int64)
    row = {t: i for i, t in enumerate(tasks)}
    for k, task in enumerate(labels):
        if task in row:
            np.add.at(counts[row[task]], idx[k], 1)
    return counts


def usage_entropy(counts: np.ndarray) -> np.ndarray:
    """Entropy in nats of each usage distribution along the last axis (p = counts / Σ counts; 0·ln 0 = 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    if np.any(total == 0):
        raise ValueError("a usage row has no selections; every task needs at least one instance")
    p = counts / total
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)


def usage_table(selections: Selections, tasks: Sequence[str], layers: Sequence[int]) -> dict:
    """JSON-ready usage: ``{module: {"layer", "num_factors", "A"|"B": {"counts": {task: [E]}, "entropy": {task: H},
    "normalized_entropy": {task: H / ln E}}}}`` for the modules of ``layers``."""
    table = {}
    for layer in layers:
        for module in selections.modules_at(layer):
            e = selections.num_factors[module]
            entry: dict[str, Any] = {"layer": layer, "num_factors": e}
            for part, idx in (("A", selections.idx_a[module]), ("B", selections.idx_b[module])):
                counts = factor_usage(idx, selections.tasks, tasks, e)
                h = usage_entropy(counts)
                entry[part] = {"counts": {t: counts[i].tolist() for i, t in enumerate(tasks)},
                               "entropy": {t: float(h[i]) for i, t in enumerate(tasks)},
                               "normalized_entropy": {t: float(h[i] / np.log(e)) for i, t in enumerate(tasks)}}
            table[module] = entry
    return table


# ---------------------------------------------------------------------------------------------- sets and distances
def selection_indicator(selections: Selections, layers: Sequence[int], parts: str = "ab") -> np.ndarray:
    """bool [N, F]: instance k's tagged selection set at ``layers`` (see the module docstring), one block of E
    columns per (module, pool) in sorted module order, A before B."""
    check_choice("parts", parts, SELECTION_PARTS)
    blocks = []
    for layer in layers:
        modules = selections.modules_at(layer)
        if not modules:
            raise ValueError(f"layer {layer} holds no MixLoRA module; layers with selections: {selections.layers()}")
        for module in modules:
            for pool, idx in (("a", selections.idx_a[module]), ("b", selections.idx_b[module])):
                if pool in parts:
                    block = np.zeros((len(selections.tasks), selections.num_factors[module]), dtype=bool)
                    np.put_along_axis(block, np.asarray(idx), True, axis=1)
                    blocks.append(block)
    return np.concatenate(blocks, axis=1)


def jaccard_distances(x: np.ndarray, y: Optional[np.ndarray] = None) -> np.ndarray:
    """float64 [N, M]: d[a, b] = 1 - |x_a ∩ y_b| / |x_a ∪ y_b| for indicator rows (``y`` defaults to ``x``);
    two empty sets are at distance 0."""
    x = np.asarray(x, dtype=bool)
    y = x if y is None else np.asarray(y, dtype=bool)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"indicator matrices must be [N, F] and [M, F], got {x.shape} and {y.shape}")
    xf, yf = x.astype(np.float64), y.astype(np.float64)
    inter = xf @ yf.T
    union = xf.sum(axis=1)[:, None] + yf.sum(axis=1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)
    return 1.0 - sim


def mean_selection_set(x: np.ndarray) -> np.ndarray:
    """bool [F]: the elements selected by at least half of the rows of ``x`` [n, F] (the rounded mean)."""
    x = np.asarray(x, dtype=bool)
    if x.shape[0] == 0:
        raise ValueError("a task with no instances has no mean selection set")
    return x.mean(axis=0) >= 0.5


def task_distances(x: np.ndarray, labels: Sequence[str], heldout: Sequence[str], train: Sequence[str],
                   linkage: str = "centroid") -> np.ndarray:
    """float64 [H, T]: distance of each held-out task to each training task (``LINKAGES``; module docstring)."""
    check_choice("linkage", linkage, LINKAGES)
    labels = np.asarray(labels)
    rows = {t: x[labels == t] for t in list(heldout) + list(train)}
    empty = [t for t, r in rows.items() if len(r) == 0]
    if empty:
        raise ValueError(f"task(s) {empty} have no instances")
    out = np.zeros((len(heldout), len(train)))
    for j, t in enumerate(train):
        ref = mean_selection_set(rows[t])[None, :] if linkage == "centroid" else rows[t]
        for i, h in enumerate(heldout):
            out[i, j] = jaccard_distances(rows[h], ref).mean()
    return out


def nearest_training_tasks(x: np.ndarray, labels: Sequence[str], heldout: Sequence[str], train: Sequence[str],
                           closest: Optional[dict[str, Sequence[str]]] = None, linkage: str = "centroid") -> dict:
    """{held-out: {"nearest", "distance", "distances": {train task: d}, "manifest_closest", "nearest_in_closest",
    "closest_rank"}} where ``closest_rank`` is the 1-based rank (by distance) of the best-ranked task that the
    manifest lists as closest (None if none of them was analysed)."""
    d = task_distances(x, labels, heldout, train, linkage)
    closest = closest or {}
    out = {}
    for i, h in enumerate(heldout):
        order = [train[j] for j in np.argsort(d[i], kind="stable")]
        listed = list(closest.get(h, []))
        ranks = [order.index(t) + 1 for t in listed if t in order]
        out[h] = {"nearest": order[0], "distance": float(d[i].min()),
                  "distances": {t: float(d[i, j]) for j, t in enumerate(train)},
                  "manifest_closest": listed, "nearest_in_closest": order[0] in listed,
                  "closest_rank": min(ranks) if ranks else None}
    return out


def tsne_embedding(distances: np.ndarray, seed: int = 0, perplexity: Optional[float] = None) -> np.ndarray:
    """[N, 2] t-SNE of a precomputed distance matrix (scikit-learn; perplexity default min(30, (N-1)/3))."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as err:
        raise ImportError("the t-SNE plots need scikit-learn: `pip install scikit-learn==1.9.1`") from err
    n = distances.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 instances, got {n}; raise --n")
    perplexity = perplexity if perplexity is not None else max(1.0, min(30.0, (n - 1) / 3.0))
    if not 0 < perplexity < n:
        raise ValueError(f"perplexity must be in (0, {n}) for {n} instances, got {perplexity}")
    tsne = TSNE(n_components=2, metric="precomputed", init="random", perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(np.asarray(distances, dtype=np.float64))


def pair_heldout(closest: dict[str, Sequence[str]], train: Sequence[str]) -> dict[str, Optional[str]]:
    """Pair each held-out task with one analysed training task for the plots: its first listed closest task not
    yet paired, else its first listed one that was analysed, else None."""
    used: set[str] = set()
    pairs: dict[str, Optional[str]] = {}
    for h, listed in closest.items():
        present = [t for t in listed if t in train]
        free = [t for t in present if t not in used]
        pairs[h] = free[0] if free else (present[0] if present else None)
        if pairs[h] is not None:
            used.add(pairs[h])
    return pairs


# ---------------------------------------------------------------------------------------------- the whole analysis
@dataclass
class RoutingReport:
    """Everything the routing analysis computed (JSON-ready except ``selections`` and ``tsne``)."""

    selections: Selections
    train_tasks: list[str]
    heldout_tasks: list[str]
    layers: list[int]
    parts: str
    linkage: str
    closest: dict[str, list[str]]
    pairs: dict[str, Optional[str]]
    usage: dict
    nearest: dict[str, dict]
    tsne: dict[int, np.ndarray] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return self.train_tasks + self.heldout_tasks

    def usage_json(self) -> dict:
        counts = {t: self.selections.tasks.count(t) for t in self.tasks}
        return {"tasks": self.tasks, "kind": {t: ("heldout" if t in self.heldout_tasks else "train")
                                                for t in self.tasks},
                "instances": counts, "layers": self.layers, "modules": self.usage, "info": self.info,
                "entropy": "nats, of p = counts / sum(counts); normalized_entropy = entropy / ln(num_factors)"}

    def nearest_json(self) -> dict:
        return {"linkage": self.linkage, "parts": self.parts, "train_tasks": self.train_tasks,
                "pairs": self.pairs, "layers": self.nearest, "info": self.info}

    def tsne_json(self, layer: int) -> dict:
        coords = self.tsne[layer]
        return {"layer": layer, "parts": self.parts, "points": [
            {"task": t, "x": float(c[0]), "y": float(c[1])} for t, c in zip(self.selections.tasks, coords)]}


def _prompt_dataset(rows: list[dict], task: str, path: Path, stack, template: str):
    from mixlora.data.dataset import PromptDataset

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return PromptDataset(str(path), stack.tokenizer, stack.image_processor, stack.model.num_image_tokens,
                         template=template, task_name=task)


def training_prompts(records: Sequence[dict], positions: Sequence[int], image_folder: str | Path,
                     source: str = "annotations") -> list[dict]:
    """Prompt-only instances ``{"unique_id", "prompt", "image_path"}`` of Vision-Flan records: the first human
    turn (its ``<image>`` tag is moved to the front by the template) and the absolute image path.
    Text-only records are left out (routing is compared on image+instruction prompts)."""
    rows = []
    for i in positions:
        record = records[i]
        turns = record.get("conversations") or []
        if not turns or turns[0].get("from") != "human" or not isinstance(turns[0].get("value"), str):
            raise ValueError(f"{source}: record {i} (task {record.get('task_name')!r}) does not start with a human "
                             "turn; fix it or clean the file with data/prepare_vision_flan.py")
        if not record.get("image"):
            logger.warning("%s: record %d is text-only; left out of the routing analysis", source, i)
            continue
        rows.append({"unique_id": str(i), "prompt": turns[0]["value"],
                     "image_path": str(Path(image_folder) / record["image"])})
    return rows


def definition_lookup(task: str):
    """``(task name, Example)`` under which an analysed task's definition is looked up with
    ``find_definition``: ``"mme/count"`` -> ("mme", group "count"), keys ``["mme/count", "mme", "count"]`` as
    eval.py tries them for MME's count subtask; a name without "/" is its own single key."""
    from mixlora.tasks.common import Example

    head, _, tail = task.partition("/")
    return head, Example(uid=task, question="", image=None, group=tail or head)


def task_definition_keys(tasks: Iterable[str], definitions: Mapping[str, str]) -> dict[str, str]:
    """{task: the key of its definition}; ValueError naming every task without one, the keys tried and the fix."""
    from mixlora.tasks.common import definition_keys, find_definition

    found, missing = {}, {}
    for task in tasks:
        name, example = definition_lookup(task)
        key = find_definition(name, example, definitions)
        if key is None:
            missing[task] = " or ".join(repr(k) for k in definition_keys(name, example))
        else:
            found[task] = key
    if missing:
        listed = "; ".join(f"{task}: {keys}" for task, keys in missing.items())
        raise ValueError(f"the model routes on task definitions (adapter routing_source=task), but the definitions "
                         f"have none for {listed}. Add an entry per task to the task_definitions.json (JSON object "
                         "key -> definition text; the synthetic suite writes all of its keys) and pass it with "
                         "--task-definitions PATH")
    return found


def analyse_routing(stack, prompts: dict[str, list[dict]], heldout: Sequence[str],
                    closest: dict[str, Sequence[str]], layers: Sequence[int], parts: str = "ab",
                    linkage: str = "centroid", template: str = "llava_v1", batch_size: int = 8, seed: int = 0,
                    perplexity: Optional[float] = None, tsne: bool = True, progress: bool = True,
                    definitions: Optional[Mapping[str, str]] = None) -> RoutingReport:
    """Route every prompt, then compute usage, nearest training tasks and (optionally) the t-SNE per layer.

    Args:
        stack: a ``mixlora.build.Stack`` whose LLM holds MixLoRA adapters.
        prompts: {task: [{"unique_id", "prompt", "image_path"}]}, training tasks and held-out sets alike; every
            prompt is rendered with ``template`` (the evaluation template by default) and routed on its own tokens
            (its task's definition under task routing; see the module docstring).
        heldout: which keys of ``prompts`` are held-out sets (the others are training tasks).
        closest: {held-out: training tasks listed as closest} (the synthetic manifest's).
        layers: decoder layers to analyse; parts: ``"ab" | "a" | "b"``; linkage: ``"centroid" | "average"``.
        definitions: {key: text}, required by (and only accepted for) a model with task routing: each prompt
            gets its task's definition row (``mixlora.tasks.evaluate.attach_definition``, the rows eval.py builds),
            rendered with ``template`` and no image; every task's key is checked before the first forward.
    """
    from mixlora.data.collator import GenerationCollator
    from mixlora.tasks.evaluate import attach_definition, check_definitions

    check_choice("parts", parts, SELECTION_PARTS)
    check_choice("linkage", linkage, LINKAGES)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    unknown = [h for h in heldout if h not in prompts]
    if unknown:
        raise ValueError(f"held-out task(s) {unknown} have no prompts")
    empty = [t for t, rows in prompts.items() if not rows]
    if empty:
        raise ValueError(f"task(s) {empty} have no prompts (all text-only, or an empty set)")
    train = [t for t in prompts if t not in heldout]
    if not train:
        raise ValueError("no training task to compare the held-out sets with")
    check_definitions(stack.model, definitions,  # a TaskError is a ValueError
                      how_to_pass="pass definitions={key: text} (scripts/routing_analysis.py: --task-definitions PATH, "
                                  "by default a run's data.task_definitions)")
    keys, encoder = {}, None
    if definitions is not None:
        from mixlora.data.definitions import DefinitionEncoder

        keys = task_definition_keys(prompts, definitions)
        encoder = DefinitionEncoder(definitions, stack.tokenizer, template)

    def sample(ds, k: int) -> dict:
        item = ds[k]
        if encoder is None:
            return item
        name, example = definition_lookup(ds.task_name)
        return attach_definition(item, example, name, definitions, encoder)

    collate = GenerationCollator(stack.tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory(prefix="mixlora-routing-") as tmp:
        datasets = [_prompt_dataset(rows, task, Path(tmp) / f"{k:04d}.jsonl", stack, template)
                    for k, (task, rows) in enumerate(prompts.items())]
        items = [(ds, k) for ds in datasets for k in range(len(ds))]
        chunks = [items[k:k + batch_size] for k in range(0, len(items), batch_size)]
        batches = (collate([sample(ds, k) for ds, k in chunk]) for chunk in chunks)
        selections = collect_selections(stack.model, batches, total=len(chunks), progress=progress)
    tasks = train + list(heldout)
    usage = usage_table(selections, tasks, layers)
    pairs = pair_heldout({h: list(closest.get(h, [])) for h in heldout}, train)
    nearest, coords = {}, {}
    for layer in layers:
        x = selection_indicator(selections, [layer], parts)
        nearest[str(layer)] = nearest_training_tasks(x, selections.tasks, heldout, train, closest, linkage)
        if tsne:
            coords[layer] = tsne_embedding(jaccard_distances(x), seed=seed, perplexity=perplexity)
    if len(layers) > 1:
        x = selection_indicator(selections, layers, parts)
        nearest["all"] = nearest_training_tasks(x, selections.tasks, heldout, train, closest, linkage)
    info: dict[str, Any] = {"template": template, "batch_size": batch_size, "seed": seed}
    if definitions is not None:  # what each task routed on, for the record
        info["task_definitions"] = {t: {"key": k, "text": definitions[k]} for t, k in keys.items()}
    return RoutingReport(selections=selections, train_tasks=train, heldout_tasks=list(heldout), layers=list(layers),
                         parts=parts, linkage=linkage, closest={h: list(closest.get(h, [])) for h in heldout},
                         pairs=pairs, usage=usage, nearest=nearest, tsne=coords,
                         info=info)


def sample_prompts(rows: Sequence[dict], n: int, seed: int, name: str) -> list[dict]:
    """``n`` prompts drawn with ``random.Random(f"{seed}/{name}")`` (all of them when there are fewer)."""
    if len(rows) <= n:
        return list(rows)
    keep = sorted(random.Random(f"{seed}/{name}").sample(range(len(rows)), n))
    return [rows[k] for k in keep]


def nearest_table(nearest: dict[str, dict]) -> str:
    """Plain-text table: one line per (layer, held-out task)."""
    lines = [f"{'layer':>5}  {'held-out':<22} {'nearest training task':<40} {'dist':>6}  {'in manifest':<11} rank"]
    for layer, rows in nearest.items():
        for h, r in rows.items():
            rank = "-" if r["closest_rank"] is None else str(r["closest_rank"])
            lines.append(f"{layer:>5}  {h:<22} {r['nearest']:<40} {r['distance']:>6.3f}  "
                         f"{'yes' if r['nearest_in_closest'] else 'no':<11} {rank}")
    return "\n".join(lines)
