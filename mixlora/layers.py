"""LoRA and MixLoRA linear layers (pure torch, plain arguments).

Shapes: ``x`` is [B, T, d_in] (batch, sequence, features); E = number of factors in each pool; r = rank.

LoRA (Hu et al. 2021), as a sum of rank-one factors (paper Eq. 1)::

    y = W x + (alpha / r) · B A dropout(x),   A = lora_a [r, d_in],  B = lora_bᵀ,  lora_b [r, d_out]
      = W x + (alpha / r) · Σ_i (a_i · x) b_i

MixLoRA (Shen et al. 2024) keeps pools {a_e} = ``lora_a`` [E, d_in] and {b_e} = ``lora_b`` [E, d_out] and picks r
factors from each pool *per instance*::

    h̄    = mean of the layer input over the routing tokens                          [B, d_in]
    p_A  = softmax(W_A h̄);  g_A = top_r(p_A)  (descending score order)            [B, E] -> [B, r]
    p_B  = softmax(W_B h̄) + CFS(A_x)          ;  g_B = top_r(p_B)                   [B, E] -> [B, r]
    y    = W x + (alpha / r) · Σ_i (a_{g_A[i]} · x) b_{g_B[i]}       (slot i of A pairs with slot i of B)

computed factored: gather A_x [B, r, d_in] and B_x [B, r, d_out], then two batched matmuls, so the cost is
T·r·(d_in + d_out) per instance like LoRA, never a dense per-instance d_in×d_out ΔW (the released code builds one).
When generating with ``decode_routing="prefill"`` (no grad, inside ``mixlora.routing``), A_x and B_x gathered at
the prefill are kept in the routing context and reused by every decode step (``mixlora.routing_state``, "The
factor cache"): a decode step then runs LoRA's two small matmuls (batched per instance) and gathers nothing.

Routing numerics (which arithmetic decides g_A, g_B). Softmax is monotone, so top_r(p_A) = top_r(W_A h̄) and, without
CFS, top_r(p_B) = top_r(W_B h̄) in exact arithmetic; in bf16/fp16 the rounded probabilities tie where the logits do
not (near the top of a 64-way softmax adjacent probabilities are often one bf16 ulp apart), and the slot order,
which decides the A–B pairing, flips too. So selection never ranks probabilities when logits rank the same:

* corrected routing (``routing_precision="float32"``, the default): h̄, both router logits, the softmax, the CFS term
  and the top-r run in float32 (float64 for a float64 layer) whatever the layer dtype, with autocast disabled for
  them: weights and inputs are cast up (the pooled [B, d_in] input, the [E, d_in] routers, the gathered
  [B, r, d_in] A rows and W_AB [r, d_in, E]; never the [B, T, d_in] activations where the backend can sum them
  into a float32 result directly). g_A = top_r(W_A h̄); g_B = top_r(W_B h̄) without CFS, else
  top_r(softmax(W_B h̄) + CFS). The float32 errors (≈ T·2⁻²⁴ relative in h̄, ≈ d_in·2⁻²⁴ in a logit) are far below
  the bf16 ones, so the selection equals the float64 selection on the same (rounded) weights and inputs
  except where two scores lie within that error of each other.
* released routing (``routing_precision="layer"``): the released selector's own arithmetic in the layer's dtype (or
  the dtype autocast gives the router linear): h̄ = x.mean(1), logits = router(h̄), g_A = top_r(logits_A),
  g_B = top_r(logits_B) without CFS, else top_r(softmax(logits_B) + CFS) with the CFS term in that dtype.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .options import (CFS_MODES, DECODE_ROUTING, ROUTER_GRAD_MODES, ROUTING_PRECISIONS, ROUTING_SOURCES, ROUTING_TOKENS,
                      check_choice, check_rank)


def _check_common(base: nn.Module, rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(base, nn.Linear):
        raise TypeError(f"adapters wrap nn.Linear layers, got {type(base).__name__}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def _frozen(base: nn.Linear) -> nn.Linear:
    for p in base.parameters():
        p.requires_grad_(False)
    return base


def _pool(rows: int, cols: int, like: nn.Linear) -> nn.Parameter:
    return nn.Parameter(torch.empty(rows, cols, device=like.weight.device, dtype=like.weight.dtype))


def routing_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype corrected routing computes in: float32, or ``dtype`` itself when wider (float64)."""
    return torch.promote_types(dtype, torch.float32)


def no_autocast(device: torch.device):
    """A context with autocast off on ``device``'s type (the corrected routing computes in its own dtype)."""
    return torch.autocast(device.type, enabled=False)


class Router(nn.Linear):
    """The bias-free router ``nn.Linear(d_in, E)``; ``forward(h)`` [B, d_in] -> logits [B, E] in ``h``'s dtype.

    The weight is cast to ``h``'s dtype (a no-op when they agree, so it is then exactly ``nn.Linear``), which lets
    corrected routing run it in float32 on bf16/fp16 weights. Routing calls the module rather than reading its
    weight, so hooks that gather parameters at a module's forward (ZeRO-3) still see it.
    """

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(h.dtype)
        return F.linear(h, self.weight.to(h.dtype), bias)


class LoRALinear(nn.Module):
    """``y = base(x) + (alpha/rank) · dropout(x) @ lora_aᵀ @ lora_b`` with a frozen ``base``.

    Args:
        base: the frozen ``nn.Linear(d_in, d_out)`` to adapt.
        rank: r.
        alpha: scaling numerator; the update is multiplied by ``alpha / rank`` (peft's convention).
        dropout: dropout on the adapter's input only.

    Parameters: ``lora_a`` [r, d_in] (Kaiming-uniform, a=√5, as peft), ``lora_b`` [r, d_out] (zeros, so the
    layer starts equal to ``base``). peft stores B as ``lora_B.weight`` [d_out, r] = ``lora_b``ᵀ.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        _check_common(base, rank, alpha, dropout)
        self.base = _frozen(base)
        self.rank, self.alpha = rank, float(alpha)
        self.scaling = self.alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = _pool(rank, base.in_features, base)
        self.lora_b = _pool(rank, base.out_features, base)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # [..., d_out]; under autocast in autocast's dtype rather than x's
        z = F.linear(self.dropout(x), self.lora_a.to(x.dtype)) * self.scaling  # [..., r]
        # In place into the base output (its backward does not need it): no second [..., d_out] buffer.
        # (An in-place op is not autocast: z and B are brought to y's dtype, a no-op without autocast.)
        y.view(-1, y.shape[-1]).addmm_(z.reshape(-1, self.rank).to(y.dtype), self.lora_b.to(y.dtype))
        return y

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


@dataclass
class Selection:
    """The factors chosen for each instance of a batch.

    ``idx_a``/``idx_b``: [B, r] pool indices, slot i of A paired with slot i of B, in descending score order.
    ``weight``: [B, r] slot multipliers whose *value* is exactly 1 but which carry the straight-through
    gradient to the routers; ``None`` when routers get no gradient.
    """

    idx_a: torch.Tensor
    idx_b: torch.Tensor
    weight: Optional[torch.Tensor] = None

    def detached(self) -> "Selection":
        return Selection(self.idx_a.detach(), self.idx_b.detach(), None)


class MixLoRALinear(nn.Module):
    """A frozen linear plus per-instance selection of r of E rank-one factors for A and for B.

    Args:
        base: the frozen ``nn.Linear(d_in, d_out)``.
        num_factors: E, the size of each factor pool.
        rank: r, factors selected per instance (1 <= r < E: ``mixlora.options.check_rank``).
        alpha: the update is multiplied by ``alpha / rank`` (the released scripts use alpha = 2E).
        dropout: dropout on the adapter input (after routing, as released).
        cfs: ``"none" | "paper" | "released"`` (see ``mixlora.options``).
        router_grad: ``"none" | "straight_through" | "straight_through_detached"`` (``mixlora.options``).
        routing_tokens: ``"prompt" | "instruction" | "all"``; ``"prompt"`` needs a mask from ``mixlora.routing``,
            ``"instruction"`` its ``instruction_mask``.
        routing_precision: ``"float32" | "layer"``: the routing arithmetic (module docstring); ``"layer"`` is the
            released selector's.
        decode_routing: ``"prefill" | "per_step"``.
        routing_source: ``"instance" | "task" | "random"`` (the routing ablation; see ``mixlora.options``).

    Parameters:
        ``lora_a`` [E, d_in] (row e = a_e, Kaiming-uniform a=√5), ``lora_b`` [E, d_out] (row e = b_e, zeros),
        ``router_a``/``router_b``: ``Router(d_in, E, bias=False)``, an ``nn.Linear`` (default init, as released),
        ``router_cfs`` [r, d_in, E] = W_AB, present when ``cfs != "none"`` (init U(±1/√(r·d_in)), the default
        init of the released E×(r·d_in) linear it is reshaped from).

    After every forward ``last_selection`` holds the (idx_a, idx_b) [B, r] chosen, for routing analyses.
    """

    def __init__(
        self,
        base: nn.Linear,
        num_factors: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        cfs: str = "paper",
        router_grad: str = "none",
        routing_tokens: str = "prompt",
        decode_routing: str = "prefill",
        routing_source: str = "instance",
        routing_precision: str = "float32",
    ):
        super().__init__()
        _check_common(base, rank, alpha, dropout)
        check_rank(rank, num_factors)
        self.cfs = check_choice("cfs", cfs, CFS_MODES)
        self.router_grad = check_choice("router_grad", router_grad, ROUTER_GRAD_MODES)
        self.routing_tokens = check_choice("routing_tokens", routing_tokens, ROUTING_TOKENS)
        self.routing_precision = check_choice("routing_precision", routing_precision, ROUTING_PRECISIONS)
        self.decode_routing = check_choice("decode_routing", decode_routing, DECODE_ROUTING)
        self.routing_source = check_choice("routing_source", routing_source, ROUTING_SOURCES)
        self.base = _frozen(base)
        self.num_factors, self.rank, self.alpha = num_factors, rank, float(alpha)
        self.scaling = self.alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        d_in, d_out = base.in_features, base.out_features
        self.lora_a = _pool(num_factors, d_in, base)
        self.lora_b = _pool(num_factors, d_out, base)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.router_a = Router(d_in, num_factors, bias=False, **kw)
        self.router_b = Router(d_in, num_factors, bias=False, **kw)
        self.router_cfs = (
            nn.Parameter(torch.empty(rank, d_in, num_factors, **kw)) if self.cfs != "none" else None
        )
        self.last_selection: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._routing_state = None  # set by mixlora.routing(...)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)
        self.router_a.reset_parameters()
        self.router_b.reset_parameters()
        if self.router_cfs is not None:
            bound = 1.0 / math.sqrt(self.rank * self.base.in_features)
            nn.init.uniform_(self.router_cfs, -bound, bound)

    # ---------------------------------------------------------------- routing
    @property
    def released_arithmetic(self) -> bool:
        """Whether routing reproduces the released selector's layer-dtype arithmetic (``routing_precision="layer"``)
        rather than the corrected float32 one (module docstring)."""
        return self.routing_precision == "layer"

    def route(self, h: torch.Tensor) -> Selection:
        """Select factors from the pooled router input ``h`` [B, d_in] (see the module docstring's numerics).

        Returns ``Selection`` with idx_a, idx_b [B, r] in descending score order. Corrected: computed in
        ``routing_dtype(h.dtype)`` (float32 unless h is float64) with autocast off, ``h`` and every weight cast up.
        Released: ``h`` cast to the router's dtype and every op left to the layer dtype (and to autocast).
        Under ``router_grad="straight_through"`` or ``"straight_through_detached"`` (with grad enabled; the
        latter routes on ``h.detach()``, see ``_route_pooled``) ``weight`` = (s_a / s_a.detach()) ·
        (s_b / s_b.detach()) with s the selected probabilities: softmax(W_A h̄)[g_A] and, for B, the ranked score
        (softmax(W_B h̄) [+ CFS])[g_B]; its value is exactly 1 and it carries the routers' gradient. It is computed
        as exp(Σ (log s - log s.detach())) from log-softmax, so a selected probability that underflows to 0 does
        not make it 0/0.
        """
        learn = self.router_grad != "none" and torch.is_grad_enabled()
        released = self.released_arithmetic
        dtype = self.router_a.weight.dtype if released else routing_dtype(h.dtype)
        with torch.set_grad_enabled(learn), (nullcontext() if released else no_autocast(h.device)):
            h = h.to(dtype)
            logits_a = self.router_a(h)  # [B, E]
            idx_a = logits_a.topk(self.rank, dim=-1).indices  # sorted: slot 0 = best
            logits_b = self.router_b(h)
            if self.cfs == "none":
                score_b = None
                idx_b = logits_b.topk(self.rank, dim=-1).indices
            else:
                score_b = torch.softmax(logits_b, dim=-1) + self.cfs_scores(idx_a, None if released else dtype)
                idx_b = score_b.topk(self.rank, dim=-1).indices
            weight = None
            if learn:
                # s / s.detach() as exp(log s - log s.detach()): the same value (exactly 1) and gradient (∂ log s),
                # but a selected factor whose probability underflows to 0 (peaked routers: a logit gap over ~100
                # in float32) gives 1 instead of 0/0 = NaN. log_softmax keeps log s finite there.
                l_a = torch.log_softmax(logits_a, dim=-1).gather(-1, idx_a)
                if score_b is None:
                    l_b = torch.log_softmax(logits_b, dim=-1).gather(-1, idx_b)
                else:  # softmax + CFS term: a sum of probabilities, floored at the smallest normal number
                    l_b = score_b.gather(-1, idx_b).clamp_min(torch.finfo(score_b.dtype).tiny).log()
                weight = torch.exp((l_a - l_a.detach()) + (l_b - l_b.detach()))
        return Selection(idx_a, idx_b, weight)

    def random_selection(self, batch: int, device: torch.device) -> Selection:
        """r distinct uniformly random factors per instance for A and for B (the random-routing ablation)."""
        idx_a = torch.rand(batch, self.num_factors, device=device).topk(self.rank, dim=-1).indices
        idx_b = torch.rand(batch, self.num_factors, device=device).topk(self.rank, dim=-1).indices
        return Selection(idx_a, idx_b, None)

    def _route_pooled(self, h: torch.Tensor, state) -> Selection:
        """Route on pooled inputs ``h`` [B, d_in], taking each row's routing row under task routing."""
        if self.router_grad == "straight_through_detached":
            h = h.detach()  # the routers learn; the hidden states they read get no gradient through them
        if self.routing_source == "random":
            return self.random_selection(h.shape[0], h.device)
        if self.routing_source == "task":
            if state is None or state.source_rows is None:
                raise RuntimeError(
                    "MixLoRA routing_source='task' routes each instance on its task-definition row: pass "
                    "`source_rows` (row index per batch row) to `mixlora.routing(model, mask, source_rows=...)`."
                )
            h = h[state.source_rows.to(h.device)]
        return self.route(h)

    def cfs_scores(self, idx_a: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Conditional Factor Selection term for B, [B, E], given A's chosen indices ``idx_a`` [B, r].

        paper:    Σ_i softmax_E( Σ_d A_x[i,d] · W[i,d,:] )
        released: softmax_E( Σ_i softmax_E( (Σ_d A_x[i,d]) · (Σ_f W[i,f,:]) ) )  -- the einsum 'brd,rfe->bre'
                  with distinct d and f sums both indices separately: a product of sums, then a second softmax.

        Computed in ``dtype`` (W_AB [r, d_in, E] and the gathered A_x [B, r, d_in] cast to it); None = W_AB's dtype.
        """
        w = self.router_cfs if dtype is None else self.router_cfs.to(dtype)
        a_sel = self.lora_a[idx_a].to(w.dtype)  # [B, r, d_in]
        if self.cfs == "paper":
            return torch.softmax(torch.einsum("brd,rde->bre", a_sel, w), dim=-1).sum(dim=1)
        c = a_sel.sum(dim=-1, keepdim=True) * w.sum(dim=1).unsqueeze(0)  # [B, r, 1] * [1, r, E]
        return torch.softmax(torch.softmax(c, dim=-1).sum(dim=1), dim=-1)

    def _plain_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``x`` [B, T, d] over every position -> [B, d]: in x's dtype for released arithmetic (as
        released), else accumulated into ``routing_dtype`` (no float32 copy of x)."""
        return x.mean(dim=1) if self.released_arithmetic else x.mean(dim=1, dtype=routing_dtype(x.dtype))

    def _select(self, x: torch.Tensor) -> Selection:
        # Pooling and routing record a graph only when the routers learn (then h̄ passes gradient to x too, unless
        # straight_through_detached cuts it in _route_pooled).
        with torch.set_grad_enabled(self.router_grad != "none" and torch.is_grad_enabled()):
            return self._select_pooled(x)

    def _select_pooled(self, x: torch.Tensor) -> Selection:
        state = self._routing_state
        if state is None:
            if self.routing_tokens != "all":
                raise RuntimeError(
                    f"MixLoRA routing_tokens={self.routing_tokens!r} needs a routing mask, but this layer was called "
                    "outside `with mixlora.routing(model, mask):`. Wrap the forward in it (and the backward too when "
                    "gradient checkpointing re-runs forwards), or use routing_tokens='all'."
                )
            return self._route_pooled(self._plain_mean(x), state)
        if state.is_continuation(x):
            if self.decode_routing == "prefill":
                return state.cached(self)
            # released: re-route on the step's own tokens (one token with a KV cache: no padding to average)
            return self._route_pooled(self._plain_mean(x), state)
        if self.routing_tokens != "all":
            h = state.masked_mean(x, tokens=self.routing_tokens)  # float32 (or wider)
        elif state.sequence_mask is not None:
            # batched generation: the real tokens of each row, i.e. what the released batch-1 prefill averaged;
            # accumulated in float32, then (layer precision) rounded once to the layer dtype as x.mean(1) rounds
            h = state.masked_mean(x, tokens="sequence")
            h = h.to(x.dtype) if self.released_arithmetic else h
        else:
            h = self._plain_mean(x)  # every position, padding included (released training)
        selection = self._route_pooled(h, state)
        if self.decode_routing == "prefill":
            state.store(self, selection.detached())
        return selection

    # ---------------------------------------------------------------- forward
    def gather(self, sel: Selection, x_dtype: torch.dtype, y_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected factors: A_x = ``lora_a[idx_a]`` [B, r, d_in] in ``x_dtype`` and B_x = ``lora_b[idx_b]``
        [B, r, d_out] in ``y_dtype`` (the base output's dtype, autocast's under autocast)."""
        return self.lora_a[sel.idx_a].to(x_dtype), self.lora_b[sel.idx_b].to(y_dtype)

    def _add_update(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    weight: Optional[torch.Tensor]) -> torch.Tensor:
        """y + (alpha/r) · (dropout(x) @ A_xᵀ · weight) @ B_x, in place into ``y`` = base(x) [B, T, d_out]."""
        z = torch.bmm(self.dropout(x), a.transpose(1, 2))  # [B, T, r]
        if weight is None:
            z = z * self.scaling
        else:
            z = z * (self.scaling * weight.to(x.dtype)).unsqueeze(1)
        # base(x) + z @ B_x, in place into the base output (its backward does not need it): no second buffer.
        # (An in-place op is not autocast: z is brought to y's dtype, a no-op without autocast.)
        return y.baddbmm_(z.to(y.dtype), b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"MixLoRALinear routes per instance and expects input [batch, seq, {self.base.in_features}], "
                f"got shape {tuple(x.shape)}"
            )
        state = self._routing_state
        # Generation (no grad, decode_routing="prefill"): the factors gathered at prefill serve every decode step
        # of this routing context (mixlora.routing_state: "The factor cache").
        reuse = state is not None and self.decode_routing == "prefill" and state.reuses_factors()
        if reuse and state.is_continuation(x):
            return self._decode_step(x, state)
        sel = self._select(x)
        self.last_selection = (sel.idx_a.detach(), sel.idx_b.detach())
        y = self.base(x)  # [B, T, d_out]; under autocast in autocast's dtype rather than x's
        a, b = self.gather(sel, x.dtype, y.dtype)  # [B, r, d_in], [B, r, d_out]
        if reuse:  # a full forward (prefill) under no grad: sel.weight is None, a and b carry no graph
            state.store_factors(self, a, b)
        return self._add_update(x, y, a, b, sel.weight)

    def _decode_step(self, x: torch.Tensor, state) -> torch.Tensor:
        """A continuation forward (KV-cache decode step) of a ``decode_routing="prefill"`` layer under no grad:
        the prefill selection and its gathered factors, gathered again only if the cache has none that fit."""
        sel = state.cached(self)  # detached at the prefill
        self.last_selection = (sel.idx_a, sel.idx_b)
        y = self.base(x)
        factors = state.cached_factors(self, x.dtype, y.dtype)
        if factors is None:
            factors = self.gather(sel, x.dtype, y.dtype)
            state.store_factors(self, *factors)
        return self._add_update(x, y, *factors, None)

    def extra_repr(self) -> str:
        return (
            f"num_factors={self.num_factors}, rank={self.rank}, alpha={self.alpha:g}, cfs={self.cfs!r}, "
            f"router_grad={self.router_grad!r}, routing_tokens={self.routing_tokens!r}, "
            f"routing_precision={self.routing_precision!r}, "
            f"decode_routing={self.decode_routing!r}, routing_source={self.routing_source!r}"
        )
