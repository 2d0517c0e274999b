"""Routing ablation sources and routing numerics of the MixLoRA layer against independent references: draws and
selections checked directly, an instance-routed copy of the same weights for task routing, the corrected
selection computed from first principles in float64 with float32 error bounds, and the released selector's
arithmetic written out in the same dtype.

The ablation sources are random routing and task routing (each row routed on its task-definition row); the
numerics are bf16, fp16 and autocast layers, straight-through gradients in bf16, and the float32 masked mean.
"""

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapter_layers import _mix
from mixlora import MixLoRALinear, routing

torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------------------- routing ablation sources
def test_random_routing_draws_distinct_factors_and_follows_decode_mode():
    layer = _mix(E=8, r=3, routing_source="random", decode_routing="prefill")
    x = torch.randn(4, 5, 8)
    torch.manual_seed(0)
    with routing(layer, torch.ones(4, 5, dtype=torch.bool)):
        layer(x)
        first = layer.last_selection
        layer(x[:, :1])  # decode step: prefill selection reused
        assert torch.equal(layer.last_selection[0], first[0])
    for idx in first:
        assert all(len(set(row)) == 3 and all(0 <= e < 8 for e in row) for row in idx.tolist())
    draws = set()
    for seed in range(5):  # fresh choices per forward: several seeds give several selections
        torch.manual_seed(seed)
        with routing(layer, torch.ones(4, 5, dtype=torch.bool)):
            layer(x)
        draws.add(tuple(layer.last_selection[0].flatten().tolist()))
    assert len(draws) > 1
    layer.decode_routing = "per_step"
    torch.manual_seed(1)
    with routing(layer, torch.ones(4, 5, dtype=torch.bool)):
        layer(x)
        steps = [layer(x[:, :1]) is not None and layer.last_selection[0].clone() for _ in range(3)]
    assert not all(torch.equal(steps[0], s) for s in steps[1:])  # released: redrawn at every decode step


def test_task_routing_routes_each_row_on_its_definition_row():
    """Rows 0, 1 (instances of one task) route on row 2 (the task definition); rows 2, 3 on themselves."""
    task = _mix(cfs="paper", routing_source="task")
    inst = _mix(cfs="paper", routing_source="instance")
    inst.load_state_dict(task.state_dict())
    x = torch.randn(4, 5, 8)
    mask = torch.ones(4, 5, dtype=torch.bool)
    with routing(task, mask, source_rows=torch.tensor([2, 2, 2, 3])):
        y = task(x)
    with routing(inst, mask):
        inst(x)
    idx_a, idx_b = task.last_selection
    ref_a, ref_b = inst.last_selection
    for row, src in enumerate([2, 2, 2, 3]):
        assert torch.equal(idx_a[row], ref_a[src]) and torch.equal(idx_b[row], ref_b[src])
    # the instance's own tokens still flow through the chosen factors
    a, b = task.lora_a[idx_a[0]], task.lora_b[idx_b[0]]
    torch.testing.assert_close(y[0], task.base(x[0]) + task.scaling * (x[0] @ a.T) @ b)
    with pytest.raises(RuntimeError, match="source_rows"):
        with routing(task, mask):
            task(x)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        with routing(task, mask, source_rows=torch.tensor([0, 1, 2, 7])):
            pass


# ----------------------------------------------------------------------------- routing numerics
# Sizes where half precision visibly breaks probability ranking (64 probabilities near 1/64, one bf16 ulp ≈ 1.2e-4
# apart), small enough for any CPU.
NUM_D, NUM_E, NUM_R, NUM_B, NUM_T = 256, 64, 8, 128, 8
U32 = 2.0 ** -24  # float32 unit roundoff


def _numerics_case(cfs, routing_tokens, dtype, seed=0):
    # corrected routing: prompt tokens, float32 arithmetic; released: all tokens, the layer dtype's arithmetic
    """A layer in ``dtype`` (weights rounded to it) and inputs [B, T, d] rounded to ``dtype`` (or float32 inputs
    for autocast, dtype=None), with a routing mask of varying lengths (1..T real tokens)."""
    torch.manual_seed(seed)
    layer = MixLoRALinear(nn.Linear(NUM_D, 16), NUM_E, NUM_R, 2.0 * NUM_E, cfs=cfs, routing_tokens=routing_tokens,
                          routing_precision="float32" if routing_tokens == "prompt" else "layer")
    with torch.no_grad():
        layer.lora_a.normal_()  # CFS reads the chosen A rows: O(1) entries
        # Routers at 1/8 of their default init (a power of two: exact in every format): the logits crowd 8× closer,
        # which leaves their float32 margins relative to the error bound unchanged but makes ties among the
        # half-precision probabilities 8× more likely (what the check of the old, probability ranking needs).
        layer.router_a.weight.mul_(0.125)
        layer.router_b.weight.mul_(0.125)
    layer = layer.to(dtype or torch.float32).eval()
    x = torch.randn(NUM_B, NUM_T, NUM_D).to(dtype or torch.float32)
    lengths = torch.arange(NUM_B) % NUM_T + 1
    mask = torch.arange(NUM_T)[None, :] < lengths[:, None]
    return layer, x, mask


def _top_with_margin(scores, err, r):
    """(indices [B, r] of the r largest float64 ``scores`` [B, E] in descending order, safe [B]): an instance is
    safe when each of the r + 1 leading scores exceeds the next by more than 4·max_e err[b, e]. Each of two
    compared float32 scores is off by at most err (an error bound to first order in u), so a gap above 2·err
    orders them as float64 does; the factor 2 beyond that covers the neglected O(u²) terms many times over."""
    top = scores.topk(r + 1, dim=-1).values
    gaps = top[:, :-1] - top[:, 1:]  # [B, r]
    safe = (gaps > 4 * err.max(dim=-1).values[:, None]).all(dim=-1)
    return scores.topk(r, dim=-1).indices, safe


def _float64_selection(layer, x, mask):
    """Corrected routing from first principles in float64 on the layer's (rounded) tensors.

    h̄ = Σ_t m x_t / n; l = W h̄; g_A = top_r(l_A); g_B = top_r(l_B) (cfs none) or top_r(softmax(l_B) + Σ_i
    softmax(A_x[i] · W_AB[i])) (paper). Returns (idx_a, idx_b, safe [B]) with safe from the float32 error bounds:
      h̄_j: a float32 sum of T terms, then a division: |δh̄_j| <= (T + 1)·u·H_j,  H_j = Σ_t m |x_tj| / n;
      l_e: a float32 dot product of length d over h̄:  |δl_e| <= (d + T + 2)·u·Σ_j |W_ej| H_j  =: ε_e;
      softmax from logits off by <= ε: each p_e is off by <= p_e·(2ε + (E + 4)·u) (e^{2ε} - 1 to first order,
      plus exp, the E-term sum and the division rounding); likewise for the CFS softmaxes, whose arguments
      c_ie = Σ_d A_x[i,d] W[i,d,e] are off by <= (d + 1)·u·Σ_d |A_x[i,d]| |W[i,d,e]|; then r + 1 additions.
    """
    m = mask.double()[..., None]
    n = m.sum(dim=1)
    xd = x.double()
    h = (xd * m).sum(dim=1) / n  # [B, d]
    H = (xd.abs() * m).sum(dim=1) / n
    T, d, E, r = x.shape[1], x.shape[2], layer.num_factors, layer.rank
    w_a, w_b = layer.router_a.weight.double(), layer.router_b.weight.double()
    l_a, l_b = h @ w_a.T, h @ w_b.T  # [B, E]
    err_a = (d + T + 2) * U32 * (H @ w_a.abs().T)
    err_b = (d + T + 2) * U32 * (H @ w_b.abs().T)
    idx_a, safe_a = _top_with_margin(l_a, err_a, r)
    if layer.cfs == "none":
        idx_b, safe_b = _top_with_margin(l_b, err_b, r)
        return idx_a, idx_b, safe_a & safe_b
    assert layer.cfs == "paper"
    a_x = layer.lora_a.double()[idx_a]  # [B, r, d]
    w_ab = layer.router_cfs.double()  # [r, d, E]
    c = torch.einsum("brd,rde->bre", a_x, w_ab)
    err_c = (d + 1) * U32 * torch.einsum("brd,rde->bre", a_x.abs(), w_ab.abs())
    p_b, q = torch.softmax(l_b, dim=-1), torch.softmax(c, dim=-1)
    score = p_b + q.sum(dim=1)
    soft = (E + 4) * U32
    err = (p_b * (2 * err_b.max(-1, keepdim=True).values + soft)
           + (q * (2 * err_c.max(-1, keepdim=True).values + soft)).sum(dim=1) + (r + 1) * U32 * score)
    idx_b, safe_b = _top_with_margin(score, err, r)
    return idx_a, idx_b, safe_a & safe_b


@pytest.mark.parametrize("cfs", ["none", "paper"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "autocast"])
def test_corrected_selection_equals_float64_selection(cfs, dtype):
    """Corrected routing in bf16/fp16 layers (and fp32 layers under bf16 autocast) picks the float64 selection,
    slot order included, on every instance whose float64 margins exceed the float32 error bound; ranking the
    layer-dtype probabilities, as the code once did, gets many of those same instances wrong."""
    autocast = dtype == "autocast"
    layer, x, mask = _numerics_case(cfs, "prompt", None if autocast else dtype)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    with torch.no_grad(), ctx, routing(layer, mask):
        y = layer(x)
    assert y.dtype == (torch.bfloat16 if autocast else dtype)
    idx_a, idx_b = layer.last_selection
    ref_a, ref_b, safe = _float64_selection(layer, x, mask)
    # The bound is worst case (linear in d and T, where real errors grow like their square roots), so it leaves
    # some instances unchecked; more than half still are.
    assert safe.float().mean() > 0.5
    assert torch.equal(idx_a[safe], ref_a[safe]) and torch.equal(idx_b[safe], ref_b[safe])
    # The defect this guards against: top-r of softmax in half precision (ties where the logits differ).
    half = torch.bfloat16 if autocast else dtype
    m = mask.to(half)[..., None]
    h = ((x.to(half) * m).sum(dim=1) / m.sum(dim=1)).to(half)
    naive = torch.softmax(h @ layer.router_a.weight.to(half).T, dim=-1).topk(NUM_R, dim=-1).indices
    assert (naive[safe] != ref_a[safe]).any(dim=-1).sum() >= 1


def _released_reference(layer, x):
    """The released selector, written out: h̄ = x.mean(1), logits = h̄ W^T (nn.Linear, bias-free) in the layer
    dtype, g_A = topk(logits_A); B: topk(logits_B) (IFS only) or topk(softmax(logits_B) + softmax_E(Σ_i
    softmax_E(einsum('brd,rfe->bre', A_x, W')))) (input_lora_a_param), all in the layer dtype."""
    h = x.mean(dim=1)
    w = layer.router_a.weight
    h = h.to(w.dtype)
    logits_a = F.linear(h, w)
    idx_a = torch.topk(logits_a, layer.rank, dim=-1).indices
    logits_b = F.linear(h, layer.router_b.weight)
    if layer.cfs == "none":
        return idx_a, torch.topk(logits_b, layer.rank, dim=-1).indices
    c = torch.einsum("brd,rfe->bre", layer.lora_a[idx_a], layer.router_cfs)
    score = torch.softmax(logits_b, dim=-1) + torch.softmax(torch.softmax(c, dim=-1).sum(dim=1), dim=-1)
    return idx_a, torch.topk(score, layer.rank, dim=-1).indices


@pytest.mark.parametrize("cfs", ["none", "released"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "autocast"])
def test_released_selection_equals_the_released_arithmetic(cfs, dtype):
    """Released routing = the released selector's ops on the same tensors in the same dtype (under autocast, the
    same autocast), so the selections are identical, not merely close; ranking probabilities instead would not
    be (in bf16 they tie where the raw logits do not)."""
    autocast = dtype == "autocast"
    layer, x, _ = _numerics_case(cfs, "all", None if autocast else dtype)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
    with torch.no_grad(), ctx:
        layer(x)
        ref_a, ref_b = _released_reference(layer, x)
        logits_a = F.linear(x.mean(dim=1), layer.router_a.weight)
    idx_a, idx_b = layer.last_selection
    assert torch.equal(idx_a, ref_a) and torch.equal(idx_b, ref_b)
    by_probability = torch.softmax(logits_a, dim=-1).topk(NUM_R, dim=-1).indices
    assert (by_probability != ref_a).any(dim=-1).sum() >= 1


@pytest.mark.parametrize("routing_tokens", ["prompt", "all"])
def test_straight_through_gradients_in_bf16(routing_tokens):
    """bf16 weights: corrected routing runs in float32, released in bf16; either way the routers get finite,
    non-zero straight-through gradients and the pools get gradient on the selected rows only."""
    layer = _mix(E=8, r=2, cfs="paper" if routing_tokens == "prompt" else "released", router_grad="straight_through",
                 routing_tokens=routing_tokens,
                 routing_precision="float32" if routing_tokens == "prompt" else "layer").to(torch.bfloat16)
    for p in layer.parameters():
        if p is not layer.base.weight and p is not layer.base.bias:
            p.requires_grad_(True)
    x = torch.randn(3, 5, 8, dtype=torch.bfloat16)
    with routing(layer, torch.ones(3, 5, dtype=torch.bool)):
        layer(x).float().pow(2).sum().backward()
    idx_a, idx_b = layer.last_selection
    assert torch.equal(layer.lora_a.grad.abs().sum(1) > 0, torch.isin(torch.arange(8), idx_a))
    assert torch.equal(layer.lora_b.grad.abs().sum(1) > 0, torch.isin(torch.arange(8), idx_b))
    for p in (layer.router_a.weight, layer.router_b.weight, layer.router_cfs):
        assert p.grad is not None and p.grad.dtype == torch.bfloat16
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_masked_mean_is_float32_and_falls_back_where_bmm_cannot_write_float32(monkeypatch):
    """bf16 inputs: the masked mean comes back in float32 and equals the float64 mean of the same bf16 values to
    float32 accuracy (a float32 sum of T terms and one division: |error| <= (T + 1)·u·Σ_t m|x_t| / n). A device
    type marked as having bmm(..., out_dtype=float32) that turns out not to (here the CPU) is switched to the
    float32-copy path on first use, with the same result."""
    from mixlora import routing_state

    x = torch.randn(4, 6, 5).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [0, 0, 0, 0, 1, 1], [0, 1, 0, 1, 0, 1]], dtype=torch.bool)
    m = mask.double()[..., None]
    expected = (x.double() * m).sum(1) / m.sum(1)
    bound = 7 * U32 * (x.double().abs() * m).sum(1) / m.sum(1)
    monkeypatch.setitem(routing_state._DIRECT_SUM, "cpu", True)
    state = routing_state.RoutingState(mask)
    for _ in range(2):  # first call: the failed attempt and the fallback; second: the fallback directly
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast would make bmm bf16; the mean turns it off
            h = state.masked_mean(x)
        assert h.dtype == torch.float32
        assert ((h.double() - expected).abs() <= bound).all()
        assert routing_state._DIRECT_SUM["cpu"] is False
