"""Optimiser parameter groups and the learning-rate schedule (linear warmup, then cosine decay or constant).

Schedule, as a multiplier of the peak learning rate at optimiser step ``s`` (0-based: the LR used by step s+1),
with ``W`` warmup steps and ``N`` scheduled steps::

    s < W:        (s + 1) / W                                       linear warmup, never exactly 0
    cosine:       m + (1 - m) · ½ (1 + cos(π · (s - W) / (N - W)))  from 1 at s = W down to m at s = N
    constant:     1

where ``m`` = ``min_lr_ratio``. Past ``N`` the cosine stays at ``m``. ``W = warmup_steps`` if given, else
``ceil(warmup_ratio · N)`` (the HF Trainer rounds the same way; the released runs used 3 %).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from .settings import LR_SCHEDULES, ConfigError


def warmup_steps_for(total_steps: int, warmup_ratio: float, warmup_steps: int | None) -> int:
    if warmup_steps is not None:
        if warmup_steps >= total_steps:
            raise ConfigError(f"trainer.warmup_steps={warmup_steps} must be smaller than the {total_steps} scheduled "
                              "steps")
        return warmup_steps
    return math.ceil(warmup_ratio * total_steps)


def lr_multiplier(step: int, total_steps: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """The multiplier of the peak LR for 0-based optimiser step ``step`` (see the module docstring)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={schedule!r} is not one of {LR_SCHEDULES}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int, schedule: str,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_multiplier`; its state_dict holds only the step counter."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, total_steps, warmup, schedule, min_ratio))


def parameter_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups of the trainable parameters: matrices (and 3-D CFS weights) with ``weight_decay``, 1-D
    parameters (biases) with none. Empty groups are dropped."""
    decay, no_decay = [], []
    for _, p in named:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(optimizer_cfg: dict, named_params: Iterable[tuple[str, nn.Parameter]],
                    device: torch.device) -> torch.optim.Optimizer:
    """Instantiate the ``_partial_`` optimiser node on :func:`parameter_groups`.

    On CUDA, torch's Adam/AdamW get ``fused=True`` unless the node sets ``fused``: a fused kernel that needs no
    compilation (DeepSpeed's own optimisers compile ops on first use).
    """
    from hydra.utils import get_class, instantiate

    cfg = dict(optimizer_cfg)
    target = get_class(cfg["_target_"])
    if device.type == "cuda" and target in (torch.optim.AdamW, torch.optim.Adam) and "fused" not in cfg:
        cfg["fused"] = True
    weight_decay = float(cfg.get("weight_decay", 0.0))
    groups = parameter_groups(named_params, weight_decay)
    if not groups:
        raise ConfigError("nothing to train: no parameter requires a gradient (adapter=none with a frozen projector?)")
    return instantiate(cfg)(groups)
