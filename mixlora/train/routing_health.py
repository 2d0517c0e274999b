"""Routing health while training: how much of each factor pool the routers use, per kind of adapted module.

A MixLoRA layer picks r of its E factors for A and for B per instance. A router that collapses onto a few
factors wastes the rest of the pool (they get no gradient), and nothing in the loss shows it. Over each logging
window the trainer counts, per layer, how often every factor was selected (``c_e``, e = 1..E; every instance adds
r selections), and reports per pool (A, B):

    used    = |{e : c_e > 0}| / E                             fraction of the pool selected at least once
    entropy = H(p) / log E,  p_e = c_e / Σ c,  H(p) = -Σ_e p_e log p_e  (0 log 0 = 0)
              1 = every factor equally often; log r / log E = the same r factors always (0 for r = 1);
              E = 1 gives 1

Each value is computed per layer, then averaged over the layers of a group; a group is the module kind (the last
name component: ``q_proj``, ``k_proj``, ..., ``down_proj``), so a group's ``used`` is the mean per-layer
fraction, not the union over layers (which would hide every layer using the same few factors).

Counting is cheap: after each micro-batch every layer's ``last_selection`` (idx_a, idx_b [B, r]) is offset into
one flat index space (layer l's A pool at ``off_l``, its B pool at ``ΣE + off_l``), concatenated, and added into
one int64 count vector on the device with ``scatter_add_``, i.e. a couple of kernels per micro-batch and no
device-to-host copy. (``torch.bincount`` would be the obvious call, but on CUDA it reads the input's maximum on
the host to size its output: a synchronisation per call.) The vector is copied to the host only at log time,
summed over ranks there (all ranks count their own micro-batches; under ZeRO the report covers the whole
global batch), and reset.

Each forward of a micro-batch is counted once (``last_selection`` is cleared after it is read; a gradient-
checkpointing re-forward overwrites it with the same selection). Under ``routing_source=task`` the batch also
holds the task-definition rows, which route (on themselves) and are counted like the instances.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

HEALTH_KEYS = ("used_a", "used_b", "entropy_a", "entropy_b")


def pool_health(counts: Sequence[float]) -> tuple[float, float]:
    """(used, normalised entropy) of one pool's selection counts (module docstring). ValueError for an empty
    pool or no selections at all (nothing to measure)."""
    counts = [float(c) for c in counts]
    size, total = len(counts), sum(counts)
    if size == 0 or total <= 0:
        raise ValueError(f"pool_health needs a non-empty pool with at least one selection, got counts {counts}")
    used = sum(1 for c in counts if c > 0) / size
    if size == 1:
        return used, 1.0
    entropy = -sum((c / total) * math.log(c / total) for c in counts if c > 0)
    return used, entropy / math.log(size)


def module_kind(name: str) -> str:
    """The group of a layer: the last component of its module name (``model.layers.3.self_attn.q_proj`` ->
    ``q_proj``)."""
    return name.rsplit(".", 1)[-1]


def group_health(layer_counts: Sequence[tuple[str, Sequence[float], Sequence[float]]], digits: int = 4) -> dict:
    """{group: {used_a, used_b, entropy_a, entropy_b}} from ``(layer name, A counts, B counts)`` per layer:
    :func:`pool_health` per layer and pool, averaged over each group's layers, rounded to ``digits``. Groups
    appear in the order of their first layer. Layers without selections are left out."""
    sums: dict[str, list[float]] = {}
    layers: dict[str, int] = {}
    for name, counts_a, counts_b in layer_counts:
        if sum(counts_a) <= 0 or sum(counts_b) <= 0:
            continue
        used_a, entropy_a = pool_health(counts_a)
        used_b, entropy_b = pool_health(counts_b)
        kind = module_kind(name)
        acc = sums.setdefault(kind, [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((used_a, used_b, entropy_a, entropy_b)):
            acc[i] += v
        layers[kind] = layers.get(kind, 0) + 1
    return {kind: {k: round(v / layers[kind], digits) for k, v in zip(HEALTH_KEYS, acc)}
            for kind, acc in sums.items()}


class RoutingCounter:
    """Selection counts of every MixLoRA layer of a model over a logging window (module docstring).

    ``add()`` after each micro-batch (forward and backward); ``read(dist)`` at log time (a collective: every rank
    calls it at the same steps) returns :func:`group_health` of the window and starts a new one.
    """

    def __init__(self, layers: Sequence[tuple[str, torch.nn.Module]], device: torch.device):
        self.names = [n for n, _ in layers]
        self.modules = [m for _, m in layers]
        self.sizes = [int(m.num_factors) for m in self.modules]
        self.offsets, off = [], 0
        for size in self.sizes:
            self.offsets.append(off)
            off += size
        self.pool_total = off
        self.counts = torch.zeros(2 * off, dtype=torch.int64, device=device)

    @classmethod
    def of(cls, model: torch.nn.Module, device: torch.device) -> Optional["RoutingCounter"]:
        """A counter over ``model``'s MixLoRA layers, or None when it has none (LoRA, no adapter)."""
        from mixlora.routing_state import mixlora_layers

        layers = mixlora_layers(model)
        return cls(layers, device) if layers else None

    def add(self) -> None:
        """Count the selections the layers made in the last forward and clear them."""
        pieces = []
        for module, off in zip(self.modules, self.offsets):
            sel = module.last_selection
            if sel is None:
                continue
            idx_a, idx_b = sel
            pieces.append(idx_a.reshape(-1) + off)
            pieces.append(idx_b.reshape(-1) + (self.pool_total + off))
            module.last_selection = None
        if pieces:
            idx = torch.cat([p.to(self.counts.device) for p in pieces])
            self.counts.scatter_add_(0, idx, torch.ones_like(idx))

    def read(self, dist=None) -> dict:
        """The window's :func:`group_health`, counts summed over ranks (``dist.all_reduce_sum``); resets."""
        values = self.counts.tolist()
        if dist is not None:
            values = dist.all_reduce_sum([float(v) for v in values])
        self.counts.zero_()
        per_layer = []
        for name, size, off in zip(self.names, self.sizes, self.offsets):
            b = self.pool_total + off
            per_layer.append((name, values[off:off + size], values[b:b + size]))
        return group_health(per_layer)


def routing_summary(health: dict) -> str:
    """The batch-log field: the smallest ``used`` fraction over the groups, for A and for B
    (``pool used min A 0.94 B 0.88``); empty without groups."""
    if not health:
        return ""
    return (f"pool used min A {min(g['used_a'] for g in health.values()):.2f} "
            f"B {min(g['used_b'] for g in health.values()):.2f}")
