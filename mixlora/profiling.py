"""Memory accounting shared by the benchmarks (scripts/bench_adapters.py, scripts/bench_train.py)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def saved_activations(module: nn.Module) -> Iterator[dict[int, int]]:
    """Record what autograd saves for backward inside the block: ``{storage data_ptr: nbytes}``.

    Distinct storages are counted once (views of one tensor share it) and ``module``'s parameters are left out,
    so ``sum(result.values())`` is the activation memory a forward keeps alive until its backward: the CPU
    stand-in for a CUDA peak-memory measurement.
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield storages
