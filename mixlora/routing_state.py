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

Which tokens a full forward averages (h̄, [B, d_in]):

* ``routing_tokens="prompt"``: the ``mask`` tokens, summed and divided in float32 (``masked_mean``);
* ``routing_tokens="instruction"``: likewise over the ``instruction_mask`` tokens (the user's instruction only);
* ``routing_tokens="all"``: every position (the released mean: in training it covers the answer and the right
  padding, as released), except where the context carries a ``sequence_mask`` (True on each row's own tokens,
  False on padding that batching added): then the mean covers exactly those tokens. ``LlavaMixModel.generate``
  passes its attention mask here, so a left-padded prompt routes as it would alone, i.e. as the released
  evaluation (batch 1, no padding) routed it, at any batch size. A decode step with a KV cache is one token per
  row, so per-step routing never sees padding.

The factor cache. A ``decode_routing="prefill"`` layer that runs with grad disabled (generation) also keeps, per
context, the factors its prefill gathered, A_x = ``lora_a[idx_a]`` [B, r, d_in] and B_x = ``lora_b[idx_b]``
[B, r, d_out], and its continuation forwards reuse them instead of gathering both from the pools again at every
decode step (the values are the very tensors the prefill used, so outputs are bitwise those of re-gathering). A new
full forward in the context (a new prefill, which routes afresh) replaces them; the cache dies with its context
(``routing`` empties it on exit, and ``LlavaMixModel.generate`` opens one context per call), so it is never
kept across generate calls. With grad enabled (training, a checkpoint re-forward) nothing is cached or read: factors are
gathered at every forward so gradients reach the pools. An entry is also refused when a pool changed after it was
gathered (its version counter or storage moved: optimizer steps, in-place copies under no grad,
``load_state_dict``); only ``.data`` writes escape that check, so do not edit pools through ``.data`` between a
prefill and its decode steps. ``routing(..., cache_factors=False)`` (or ``RoutingState.cache_factors = False``)
turns the cache off: every forward gathers its factors from the pools. Memory: B·r·(d_in + d_out) values per
layer, e.g. 4.8 MiB per LLaMA-7B decoder layer (q, k, v, o, gate, up, down) at B = 8, r = 4, bf16
(152 MiB for 32 layers; the KV cache of 1,000 tokens at that batch is about 4 GiB).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from .layers import MixLoRALinear, Selection, no_autocast, routing_dtype


def _check_token_mask(name: str, mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"{name} must be a [batch, seq] tensor, got {type(mask).__name__} "
                         f"{tuple(getattr(mask, 'shape', ()))}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be boolean (True = route on this token), got {mask.dtype}")
    # One check per context rather than per layer: an instance with no routing token has no mean.
    if not bool(mask.any(dim=1).all()):
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"{name} has no True token for batch rows {empty}; every instance needs "
                         "at least one prompt token to route on")


# Device types whose bmm can write a float32 result from bf16/fp16 inputs (``out_dtype``); turned off on failure.
_DIRECT_SUM = {"cuda": True}


class RoutingState:
    """Per-context routing information shared by all MixLoRA layers of a model.

    ``cache_factors``: whether ``decode_routing="prefill"`` layers reuse their prefill factors at decode steps
    under no grad (module docstring, "The factor cache"); None = the class default ``RoutingState.cache_factors``.
    """

    cache_factors: bool = True

    def __init__(self, mask: Optional[torch.Tensor], source_rows: Optional[torch.Tensor] = None,
                 sequence_mask: Optional[torch.Tensor] = None, instruction_mask: Optional[torch.Tensor] = None,
                 cache_factors: Optional[bool] = None):
        if cache_factors is not None:
            if not isinstance(cache_factors, bool):
                raise TypeError(f"cache_factors must be True, False or None, got {cache_factors!r}")
            self.cache_factors = cache_factors
        if mask is not None:
            _check_token_mask("routing mask", mask)
        if instruction_mask is not None:
            _check_token_mask("instruction_mask", instruction_mask)
            other = mask if mask is not None else sequence_mask
            if other is not None and instruction_mask.shape != other.shape:
                raise ValueError(f"instruction_mask has shape {tuple(instruction_mask.shape)} but the routing mask "
                                 f"has {tuple(other.shape)}")
        if sequence_mask is not None:
            _check_token_mask("sequence_mask", sequence_mask)
            if mask is not None and sequence_mask.shape != mask.shape:
                raise ValueError(f"sequence_mask has shape {tuple(sequence_mask.shape)} but the routing mask has "
                                 f"{tuple(mask.shape)}")
        if source_rows is not None:
            rows = torch.as_tensor(source_rows)
            if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
                raise ValueError("source_rows must be an integer tensor [batch] giving, for each batch row, the row it "
                                 f"routes on; got {rows.dtype} {tuple(rows.shape)}")
            n = rows.shape[0]
            shaped = next((m for m in (mask, sequence_mask, instruction_mask) if m is not None), None)
            if shaped is not None and n != shaped.shape[0]:
                raise ValueError(f"source_rows has {n} rows but the routing mask has {shaped.shape[0]}")
            if not bool(((rows >= 0) & (rows < n)).all()):
                raise ValueError(f"source_rows values must lie in [0, {n}), got {rows.tolist()}")
            source_rows = rows
        self.mask = mask
        self.sequence_mask = sequence_mask
        self.instruction_mask = instruction_mask
        self.source_rows = source_rows
        shaped = next((m for m in (mask, sequence_mask, instruction_mask) if m is not None), None)
        self._shape = None if shaped is None else tuple(shaped.shape)
        self.full_length: Optional[int] = None if shaped is None else shaped.shape[1]
        self._cache: dict[int, Selection] = {}
        # {id(layer): (A_x [B, r, d_in], B_x [B, r, d_out], key)}; key = the dtypes and the pools' versions/storage
        self._factors: dict[int, tuple[torch.Tensor, torch.Tensor, tuple]] = {}
        # {(tokens, dtype, device): (mask [B, 1, T] as 0/1 in dtype, token counts [B, 1] in the routing dtype)}
        self._weights: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def is_continuation(self, x: torch.Tensor) -> bool:
        batch, length = x.shape[0], x.shape[1]
        if self._shape is not None and batch != self._shape[0]:
            raise ValueError(f"routing mask has batch size {self._shape[0]} but the layer input has {batch}; "
                             "pass the mask of this batch (beam search, which expands the batch, is unsupported)")
        if self.full_length is None:
            self.full_length = length  # no mask: the first forward in the context defines the prompt
        return length != self.full_length

    def _mask_weights(self, tokens: str, dtype: torch.dtype, device: torch.device):
        key = (tokens, dtype, device)
        if key not in self._weights:
            mask = {"prompt": self.mask, "sequence": self.sequence_mask, "instruction": self.instruction_mask}[tokens]
            if mask is None:
                raise RuntimeError({
                    "prompt": "MixLoRA routing_tokens='prompt' needs a routing mask, but the routing context has "
                              "none: pass it (`mixlora.routing(model, mask)`, or routing_mask= to the model's "
                              "forward/generate)",
                    "instruction": "MixLoRA routing_tokens='instruction' needs an instruction mask, but the routing "
                                   "context has none: build the data with instruction spans (the collators then "
                                   "give batch['instruction_mask']) and pass it (`mixlora.routing(model, mask, "
                                   "instruction_mask=...)`, or instruction_mask= to the model's forward/generate)",
                    "sequence": "this routing context has no sequence_mask"}[tokens])
            mask = mask.to(device)
            counts = mask.sum(dim=1, keepdim=True).to(routing_dtype(dtype))  # [B, 1], exact integers
            self._weights[key] = (mask.to(dtype).unsqueeze(1), counts)
        return self._weights[key]

    def masked_mean(self, x: torch.Tensor, tokens: str = "prompt") -> torch.Tensor:
        """Mean of ``x`` [B, T, d] over the ``mask`` (tokens="prompt"), ``sequence_mask`` (tokens="sequence") or
        ``instruction_mask`` (tokens="instruction")
        positions -> [B, d] in ``routing_dtype(x.dtype)`` (float32 for bf16/fp16/fp32 inputs), autocast off.

        h̄[b] = (Σ_t m[b,t] · x[b,t]) / n_b as one batched matmul [B, 1, T] @ [B, T, d], then a division by the
        exact count n_b. The 0/1 mask is exact in any dtype. For half-precision ``x`` on CUDA the matmul
        accumulates and writes float32 directly (``bmm(..., out_dtype=float32)``: no float32 copy of ``x``); that op
        has no backward, so where a gradient must reach ``x`` (straight-through routers) and on CPU, ``x`` is
        copied to float32 first. Either way the sum is a float32 sum of T exact terms.
        """
        dtype = routing_dtype(x.dtype)
        direct = (x.dtype != dtype and _DIRECT_SUM.get(x.device.type, False)
                  and not (torch.is_grad_enabled() and x.requires_grad))
        with no_autocast(x.device):
            if direct:
                mask, counts = self._mask_weights(tokens, x.dtype, x.device)
                try:
                    return torch.bmm(mask, x, out_dtype=dtype).squeeze(1) / counts
                except torch.cuda.OutOfMemoryError:
                    raise
                except (RuntimeError, NotImplementedError, TypeError):  # a torch or device without it: copy from now on
                    _DIRECT_SUM[x.device.type] = False
            mask, counts = self._mask_weights(tokens, dtype, x.device)
            return torch.bmm(mask, x.to(dtype)).squeeze(1) / counts

    def store(self, layer: nn.Module, selection: Selection) -> None:
        self._cache[id(layer)] = selection
        self._factors.pop(id(layer), None)  # a new routing: factors gathered for the old selection are stale

    # ---------------------------------------------------------------- factor cache
    def reuses_factors(self) -> bool:
        """Whether factors are cached and reused now: the cache is on and grad is disabled (never in training)."""
        return self.cache_factors and not torch.is_grad_enabled()

    @staticmethod
    def _factor_key(layer: nn.Module, a_dtype: torch.dtype, b_dtype: torch.dtype) -> tuple:
        pa, pb = layer.lora_a, layer.lora_b
        return a_dtype, b_dtype, pa._version, pb._version, pa.data_ptr(), pb.data_ptr()

    def store_factors(self, layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
        """Keep ``layer``'s gathered A_x [B, r, d_in] and B_x [B, r, d_out] for its decode steps."""
        self._factors[id(layer)] = (a, b, self._factor_key(layer, a.dtype, b.dtype))

    def cached_factors(self, layer: nn.Module, a_dtype: torch.dtype,
                       b_dtype: torch.dtype) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """``layer``'s cached (A_x, B_x) if they were gathered in these dtypes from the pools as they are now, else
        None (the caller gathers and stores again)."""
        entry = self._factors.get(id(layer))
        if entry is None or entry[2] != self._factor_key(layer, a_dtype, b_dtype):
            return None
        return entry[0], entry[1]

    def clear_factors(self) -> None:
        self._factors.clear()

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
            source_rows: Optional[torch.Tensor] = None,
            sequence_mask: Optional[torch.Tensor] = None,
            instruction_mask: Optional[torch.Tensor] = None,
            cache_factors: Optional[bool] = None) -> Iterator[RoutingState]:
    """Supply the routing ``mask`` (bool [B, T]) to every MixLoRA layer in ``module``; see the module docstring.

    ``mask=None`` is allowed for layers with ``routing_tokens="all"`` (they still get the prefill cache); a
    ``"prompt"`` layer then raises when called. ``source_rows`` (long [B]) is for ``routing_source="task"``:
    row b routes on the pooled input of row ``source_rows[b]`` (e.g. the batch doubled with task-definition
    texts, whose rows route on themselves). ``sequence_mask`` (bool [B, T], True on each row's own tokens,
    False on batching's padding) makes ``routing_tokens="all"`` average those tokens only (generation; leave it
    None in training, where the released mean covers the padding). ``instruction_mask`` (bool [B, T]) is what
    ``routing_tokens="instruction"`` layers average (the collators' ``batch["instruction_mask"]``).
    ``cache_factors`` (None = ``RoutingState.cache_factors``, True) switches the prefill factor cache; the cache
    is emptied when the context exits.
    """
    state = RoutingState(mask, source_rows, sequence_mask, instruction_mask, cache_factors)
    layers = [m for _, m in mixlora_layers(module)]
    previous = [m._routing_state for m in layers]
    for m in layers:
        m._routing_state = state
    try:
        yield state
    finally:
        for m, prev in zip(layers, previous):
            m._routing_state = prev
        state.clear_factors()  # never carried past the context (e.g. from one generate call to the next)


def last_selections(module: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer name: (idx_a, idx_b)} chosen by each MixLoRA layer in its last forward ([B, r] each)."""
    return {n: m.last_selection for n, m in mixlora_layers(module) if m.last_selection is not None}
