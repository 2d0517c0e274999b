"""The routing context: which tokens MixLoRA layers average over, and the prefill cache for generation.

Usage::

    with mixlora.routing(model, mask):      # mask: bool [B, T_prompt], True on prompt tokens
        out = model.generate(...)           # prefill routes on the masked mean; decode steps reuse it

    with mixlora.routing(model, batch["routing_mask"]):
        loss = model(**batch).loss
        loss.backward()                     # inside too: gradient checkpointing re-runs forwards here

Inside a context, a forward whose sequence length equals the mask's (or, without a mask, equals the first
forward's) is a *full* forward: training, prefill, or a checkpoint re-forward; it routes afresh. Any other
length is a *continuation* (a KV-cache decode step, or a no-cache recomputation of prompt + generated tokens):
layers with ``decode_routing="prefill"`` reuse the selection cached at the full forward, so cached and
uncached greedy decoding agree; ``"per_step"`` layers re-route on the tokens they are given (released).
Contexts nest: an inner one replaces the outer until it exits.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from .layers import MixLoRALinear, Selection


class RoutingState:
    """Per-context routing information shared by all MixLoRA layers of a model."""

    def __init__(self, mask: Optional[torch.Tensor], source_rows: Optional[torch.Tensor] = None):
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
                raise ValueError(f"routing mask must be a [batch, seq] tensor, got {type(mask).__name__} "
                                 f"{tuple(getattr(mask, 'shape', ()))}")
            if mask.dtype != torch.bool:
                raise TypeError(f"routing mask must be boolean (True = route on this token), got {mask.dtype}")
            # One check per context rather than per layer: an instance with no routing token has no mean.
            if not bool(mask.any(dim=1).all()):
                empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
                raise ValueError(f"routing mask has no True token for batch rows {empty}; every instance needs "
                                 "at least one prompt token to route on")
        if source_rows is not None:
            rows = torch.as_tensor(source_rows)
            if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
                raise ValueError("source_rows must be an integer tensor [batch] giving, for each batch row, the row it "
                                 f"routes on; got {rows.dtype} {tuple(rows.shape)}")
            n = rows.shape[0]
            if mask is not None and n != mask.shape[0]:
                raise ValueError(f"source_rows has {n} rows but the routing mask has {mask.shape[0]}")
            if not bool(((rows >= 0) & (rows < n)).all()):
                raise ValueError(f"source_rows values must lie in [0, {n}), got {rows.tolist()}")
            source_rows = rows
        self.mask = mask
        self.source_rows = source_rows
        self.full_length: Optional[int] = None if mask is None else mask.shape[1]
        self._cache: dict[int, Selection] = {}
        self._weights: Optional[torch.Tensor] = None  # mask as [B, 1, T] averaging weights, built lazily

    def is_continuation(self, x: torch.Tensor) -> bool:
        batch, length = x.shape[0], x.shape[1]
        if self.mask is not None and batch != self.mask.shape[0]:
            raise ValueError(f"routing mask has batch size {self.mask.shape[0]} but the layer input has {batch}; "
                             "pass the mask of this batch (beam search, which expands the batch, is unsupported)")
        if self.full_length is None:
            self.full_length = length  # no mask: the first forward in the context defines the prompt
        return length != self.full_length

    def masked_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``x`` [B, T, d] over the masked positions -> [B, d], as one batched matmul."""
        w = self._weights
        if w is None or w.dtype != x.dtype or w.device != x.device:
            m = self.mask.to(device=x.device, dtype=x.dtype)
            w = self._weights = (m / m.sum(dim=1, keepdim=True)).unsqueeze(1)
        return torch.bmm(w, x).squeeze(1)

    def store(self, layer: nn.Module, selection: Selection) -> None:
        self._cache[id(layer)] = selection

    def cached(self, layer: nn.Module) -> Selection:
        try:
            return self._cache[id(layer)]
        except KeyError:
            raise RuntimeError(
                "decode_routing='prefill' found no prefill selection for this layer: the first forward inside "
                "`mixlora.routing(...)` must be the full prompt (its length must equal the routing mask's)."
            ) from None


def mixlora_layers(module: nn.Module) -> list[tuple[str, MixLoRALinear]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, MixLoRALinear)]


@contextmanager
def routing(module: nn.Module, mask: Optional[torch.Tensor] = None,
            source_rows: Optional[torch.Tensor] = None) -> Iterator[RoutingState]:
    """Supply the routing ``mask`` (bool [B, T]) to every MixLoRA layer in ``module``; see the module docstring.

    ``mask=None`` is allowed for layers with ``routing_tokens="all"`` (they still get the prefill cache); a
    ``"prompt"`` layer then raises when called. ``source_rows`` (long [B]) is for ``routing_source="task"``:
    row b routes on the pooled input of row ``source_rows[b]`` (e.g. the batch doubled with task-definition
    texts, whose rows route on themselves).
    """
    state = RoutingState(mask, source_rows)
    layers = [m for _, m in mixlora_layers(module)]
    previous = [m._routing_state for m in layers]
    for m in layers:
        m._routing_state = state
    try:
        yield state
    finally:
        for m, prev in zip(layers, previous):
            m._routing_state = prev


def last_selections(module: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name: (idx_a, idx_b)} chosen by each MixLoRA layer in its last forward ([B, r] each)."""
    return {n: m.last_selection for n, m in mixlora_layers(module) if m.last_selection is not None}
