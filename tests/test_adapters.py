"""Adapter layers against independent references: peft's LoRA, hand-computed routing, explicit loops."""

import math
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixlora import LoRALinear, MixLoRALinear, routing

torch.set_default_dtype(torch.float32)


def _linear(d_in, d_out, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias)


def _mix(d_in=8, d_out=6, E=6, r=2, alpha=4.0, seed=0, **kw):
    layer = MixLoRALinear(_linear(d_in, d_out, seed), E, r, alpha, **kw)
    torch.manual_seed(seed + 1)
    nn.init.normal_(layer.lora_b)  # non-zero B so the adapter path is visible
    return layer


# ----------------------------------------------------------------------------- LoRA vs peft
def test_lora_matches_peft():
    from peft import LoraConfig, get_peft_model

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(12, 7)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    net = Net()
    ours = LoRALinear(nn.Linear(12, 7), rank=3, alpha=6.0)
    ours.base.load_state_dict(net.proj.state_dict())
    peft_net = get_peft_model(Net(), LoraConfig(r=3, lora_alpha=6, target_modules=["proj"], lora_dropout=0.0))
    peft_net.base_model.model.proj.base_layer.load_state_dict(net.proj.state_dict())
    with torch.no_grad():
        nn.init.normal_(ours.lora_b)
        peft_net.base_model.model.proj.lora_A["default"].weight.copy_(ours.lora_a)
        peft_net.base_model.model.proj.lora_B["default"].weight.copy_(ours.lora_b.T)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(ours(x), peft_net(x))
    # and the scale is alpha / rank = 2 by hand
    manual = net.proj(x) + 2.0 * (x @ ours.lora_a.T) @ ours.lora_b
    torch.testing.assert_close(ours(x), manual)


def test_lora_init_matches_peft_convention():
    layer = LoRALinear(_linear(64, 32), rank=4, alpha=8)
    assert torch.count_nonzero(layer.lora_b) == 0
    bound = 1 / math.sqrt(64)  # kaiming_uniform(a=√5) on [r, d_in]
    assert layer.lora_a.abs().max() <= bound and layer.lora_a.abs().max() > 0.5 * bound
    assert not any(p.requires_grad for p in layer.base.parameters())


@pytest.mark.parametrize("cfs", ["none", "paper", "released"])
@pytest.mark.parametrize("routing_tokens", ["prompt", "all"])
def test_zero_b_equals_base(cfs, routing_tokens):
    layer = MixLoRALinear(_linear(8, 6), 6, 2, 4.0, cfs=cfs, routing_tokens=routing_tokens)
    x = torch.randn(3, 4, 8)
    with routing(layer, torch.ones(3, 4, dtype=torch.bool)):
        torch.testing.assert_close(layer(x), layer.base(x))
    lora = LoRALinear(_linear(8, 6), 2, 4.0)
    torch.testing.assert_close(lora(x), lora.base(x))


# ----------------------------------------------------------------------------- MixLoRA == LoRA special cases
def test_mixlora_routers_forced_to_index_order_equals_lora_on_first_r_factors():
    """logit_e = (E - e) · h[0] with h[0] > 0 ranks factors 0, 1, 2, ...: top-r = the first r rows, and A's slot i
    pairs with B's slot i, so the layer is LoRA on those rows. (r = E, the whole pool, is refused: check_rank.)"""
    E, r = 6, 3
    mix = _mix(E=E, r=r, alpha=6.0, cfs="none", routing_tokens="all")
    order = torch.zeros(E, 8)
    order[:, 0] = torch.arange(E, 0, -1, dtype=torch.float32)
    with torch.no_grad():
        mix.router_a.weight.copy_(order)
        mix.router_b.weight.copy_(order)
    x = torch.randn(4, 5, 8)
    x[..., 0] = x[..., 0].abs() + 0.1
    lora = LoRALinear(nn.Linear(8, 6), rank=r, alpha=6.0)
    lora.base.load_state_dict(mix.base.state_dict())
    with torch.no_grad():
        lora.lora_a.copy_(mix.lora_a[:r])
        lora.lora_b.copy_(mix.lora_b[:r])
    out = mix(x)
    assert mix.last_selection[0].tolist() == [[0, 1, 2]] * 4
    assert mix.last_selection[1].tolist() == [[0, 1, 2]] * 4
    torch.testing.assert_close(out, lora(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- hand-computed routing
def _hand_layer(cfs):
    """d_in = d_out = 2, E = 3, r = 2, scale alpha/r = 1, zero base. Values chosen so the answers are by hand."""
    layer = MixLoRALinear(nn.Linear(2, 2), num_factors=3, rank=2, alpha=2.0, cfs=cfs)
    with torch.no_grad():
        layer.base.weight.zero_()
        layer.base.bias.zero_()
        layer.router_a.weight.copy_(torch.tensor([[0.5, 0.0], [2.0, 0.0], [1.0, 0.0]]))
        layer.lora_a.copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.0]]))
        layer.lora_b.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        if cfs == "none":
            layer.router_b.weight.copy_(torch.tensor([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0]]))
        else:
            layer.router_b.weight.zero_()  # uniform IFS term for B: CFS alone decides
            layer.router_cfs.copy_(torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]],
                                                 [[0.0, 0.0, 0.0], [0.0, 5.0, 1.0]]]))
    return layer


# h̄ = [1, 0]: A logits = [0.5, 2, 1] -> idx_a = [1, 2]; a_1 = [1, -1], a_2 = [2, 0]; a_1·x = 1, a_2·x = 2.
# cfs=none:  B logits = [0, -1, 1] -> idx_b = [2, 0];  Δ = 1·b_2 + 2·b_0 = [1,1] + [2,0] = [3, 1].
# cfs=paper: c_0 = a_1·W[0] = [3, 0, -3], c_1 = a_2·W[1] = [0, 0, 0];
#            CFS = softmax([3,0,-3]) + 1/3 = [0.95033+1/3, 0.04731+1/3, 0.00236+1/3] -> idx_b = [0, 1];
#            Δ = 1·b_0 + 2·b_1 = [1, 2].
# cfs=released: Σ_d a_1 = 0, Σ_d a_2 = 2; colsum W[0] = [3,0,3], colsum W[1] = [0,5,1];
#            c_0 = 0·[3,0,3] = 0, c_1 = 2·[0,5,1] = [0,10,2];
#            inner = 1/3 + softmax([0,10,2]) = [0.333379, 1.332955, 0.333669];
#            CFS = softmax(inner) = [0.21199, 0.57596, 0.21205] -> idx_b = [1, 2]; Δ = 1·b_1 + 2·b_2 = [2, 3].
HAND = {
    "none": dict(idx_b=[2, 0], delta=[3.0, 1.0], cfs_scores=None),
    "paper": dict(idx_b=[0, 1], delta=[1.0, 2.0], cfs_scores=[0.95033 + 1 / 3, 0.04731 + 1 / 3, 0.00236 + 1 / 3]),
    "released": dict(idx_b=[1, 2], delta=[2.0, 3.0], cfs_scores=[0.21199, 0.57596, 0.21205]),
}


@pytest.mark.parametrize("cfs", ["none", "paper", "released"])
def test_hand_computed_selection_and_output(cfs):
    layer = _hand_layer(cfs)
    x = torch.tensor([[[1.0, 0.0]]])
    with routing(layer, torch.ones(1, 1, dtype=torch.bool)):
        y = layer(x)
    idx_a, idx_b = layer.last_selection
    assert idx_a.tolist() == [[1, 2]]
    assert idx_b.tolist() == [HAND[cfs]["idx_b"]]
    torch.testing.assert_close(y, torch.tensor([[HAND[cfs]["delta"]]]))
    if HAND[cfs]["cfs_scores"] is not None:
        scores = layer.cfs_scores(idx_a)
        torch.testing.assert_close(scores, torch.tensor([HAND[cfs]["cfs_scores"]]), atol=2e-5, rtol=0)


def test_released_cfs_is_the_einsum_with_distinct_indices():
    """The released contraction is einsum('brd,rfe->bre'); ours must equal it on random values."""
    layer = _mix(d_in=5, E=7, r=3, cfs="released")
    torch.manual_seed(3)
    with torch.no_grad():
        layer.lora_a.normal_()
        layer.router_cfs.normal_()
    idx_a = torch.tensor([[4, 0, 2], [1, 6, 3]])
    a_sel = layer.lora_a[idx_a]
    c = torch.einsum("brd,rfe->bre", a_sel, layer.router_cfs)
    expected = torch.softmax(torch.softmax(c, -1).sum(1), -1)
    torch.testing.assert_close(layer.cfs_scores(idx_a), expected)


def test_paper_cfs_matches_explicit_loops():
    layer = _mix(d_in=5, E=7, r=3, cfs="paper")
    torch.manual_seed(4)
    with torch.no_grad():
        layer.lora_a.normal_()
        layer.router_cfs.normal_()
    idx_a = torch.tensor([[4, 0, 2]])
    A, W = layer.lora_a.tolist(), layer.router_cfs.tolist()
    expected = [0.0] * 7
    for i, a_row in enumerate(idx_a[0].tolist()):
        logits = [sum(A[a_row][d] * W[i][d][e] for d in range(5)) for e in range(7)]
        z = sum(math.exp(v) for v in logits)
        for e in range(7):
            expected[e] += math.exp(logits[e]) / z
    torch.testing.assert_close(layer.cfs_scores(idx_a), torch.tensor([expected]), rtol=1e-5, atol=1e-6)


def test_prompt_routing_ignores_padding_and_answer_tokens():
    # token 0 = [1, 0] is the prompt; token 1 = [-3, 0] is an answer/padding token.
    # prompt: h̄ = [1, 0] -> idx_a = [1, 2].  all: h̄ = [-1, 0] -> A logits [-0.5, -2, -1] -> idx_a = [0, 2].
    x = torch.tensor([[[1.0, 0.0], [-3.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    layer = _hand_layer("paper")
    with routing(layer, mask):
        layer(x)
    assert layer.last_selection[0].tolist() == [[1, 2]]
    layer.routing_tokens = "all"
    with routing(layer, mask):
        layer(x)
    assert layer.last_selection[0].tolist() == [[0, 2]]


def test_all_routing_averages_the_sequence_mask_tokens_when_given():
    """routing_tokens='all' with a sequence_mask (generation: the real tokens) averages those tokens only; without
    one (training) it keeps the released mean over every position, padding included. Hand values as above:
    token 0 = [-3, 0] is left padding, token 1 = [1, 0] the prompt.
    sequence mask: h̄ = [1, 0] -> idx_a = [1, 2];  every position: h̄ = [-1, 0] -> idx_a = [0, 2]."""
    x = torch.tensor([[[-3.0, 0.0], [1.0, 0.0]]])
    layer = _hand_layer("released")
    layer.routing_tokens, layer.decode_routing = "all", "per_step"
    with routing(layer, None, sequence_mask=torch.tensor([[False, True]])):
        layer(x)
        assert layer.last_selection[0].tolist() == [[1, 2]]
        layer(torch.tensor([[[-1.0, 0.0]]]))  # a decode step: one token, routed on itself (A logits [-0.5, -2, -1])
        assert layer.last_selection[0].tolist() == [[0, 2]]
    with routing(layer, torch.tensor([[True, True]])):
        layer(x)
    assert layer.last_selection[0].tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="sequence_mask has shape"):
        with routing(layer, torch.ones(1, 2, dtype=torch.bool), sequence_mask=torch.ones(1, 3, dtype=torch.bool)):
            pass
    with pytest.raises(ValueError, match="sequence_mask has no True token"):
        with routing(layer, None, sequence_mask=torch.zeros(1, 2, dtype=torch.bool)):
            pass
    layer.routing_tokens = "prompt"
    with pytest.raises(RuntimeError, match="needs a routing mask"):
        with routing(layer, None, sequence_mask=torch.ones(1, 2, dtype=torch.bool)):
            layer(x)


def test_prompt_routing_unchanged_by_extra_masked_tokens_random():
    layer = _mix(cfs="paper")
    torch.manual_seed(5)
    prompt = torch.randn(2, 4, 8)
    with routing(layer, torch.ones(2, 4, dtype=torch.bool)):
        y_short = layer(prompt)
        sel_short = layer.last_selection
    longer = torch.cat([prompt, 10 * torch.randn(2, 3, 8)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3] * 2)
    with routing(layer, mask):
        y_long = layer(longer)
    assert torch.equal(layer.last_selection[0], sel_short[0]) and torch.equal(layer.last_selection[1], sel_short[1])
    torch.testing.assert_close(y_long[:, :4], y_short)


def test_decode_routing_prefill_reuses_and_per_step_reroutes():
    prompt = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # h̄ = [1, 0] -> idx_a = [1, 2]
    step = torch.tensor([[[-1.0, 0.0]]])  # alone: A logits [-0.5, -2, -1] -> idx_a = [0, 2]
    for mode, expected in [("prefill", [[1, 2]]), ("per_step", [[0, 2]])]:
        layer = _hand_layer("paper")
        layer.decode_routing = mode
        with routing(layer, torch.ones(1, 2, dtype=torch.bool)):
            layer(prompt)
            layer(step)
        assert layer.last_selection[0].tolist() == expected, mode


def test_prompt_mode_without_mask_is_a_clear_error():
    layer = _mix(routing_tokens="prompt")
    with pytest.raises(RuntimeError, match="needs a routing mask"):
        layer(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="no True token"):
        with routing(layer, torch.tensor([[True, False], [False, False]])):
            pass
    with pytest.raises(TypeError, match="boolean"):
        with routing(layer, torch.ones(1, 3)):
            pass


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cfs", ["none", "paper", "released"])
@pytest.mark.parametrize("router_grad", ["none", "straight_through"])
def test_gradients_reach_exactly_the_selected_rows(cfs, router_grad):
    layer = _mix(E=8, r=2, cfs=cfs, router_grad=router_grad)
    for p in layer.parameters():
        if p is not layer.base.weight and p is not layer.base.bias:
            p.requires_grad_(True)
    x = torch.randn(3, 5, 8)
    with routing(layer, torch.ones(3, 5, dtype=torch.bool)):
        layer(x).pow(2).sum().backward()
    idx_a, idx_b = layer.last_selection
    rows_a = torch.zeros(8, dtype=torch.bool)
    rows_a[idx_a.flatten()] = True
    rows_b = torch.zeros(8, dtype=torch.bool)
    rows_b[idx_b.flatten()] = True
    assert torch.equal(layer.lora_a.grad.abs().sum(1) > 0, rows_a)
    assert torch.equal(layer.lora_b.grad.abs().sum(1) > 0, rows_b)
    routers = [layer.router_a.weight, layer.router_b.weight] + ([layer.router_cfs] if cfs != "none" else [])
    for p in routers:
        if router_grad == "none":
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_straight_through_leaves_forward_unchanged():
    a = _mix(cfs="paper", router_grad="none")
    b = _mix(cfs="paper", router_grad="straight_through")
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5, 8)
    with routing(a, torch.ones(3, 5, dtype=torch.bool)), routing(b, torch.ones(3, 5, dtype=torch.bool)):
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("cfs", ["none", "paper"])
def test_straight_through_weight_is_one_with_finite_gradients_when_a_selected_probability_underflows(cfs):
    """Peaked routers: logits 500 and 300 for the two selected A factors, so in float32 softmax gives the second
    exactly 0 (e^-200 underflows). The straight-through multiplier must still be exactly 1 (not 0/0 = NaN) and its
    gradient finite; on moderate logits it equals d(s/s0) = (1/s0) ds, the ratio's gradient, computed by hand."""
    torch.manual_seed(0)
    layer = MixLoRALinear(nn.Linear(16, 8), 8, 2, 4.0, cfs=cfs, router_grad="straight_through",
                          routing_tokens="all")
    with torch.no_grad():
        layer.router_a.weight.zero_()
        layer.router_a.weight[0, 0], layer.router_a.weight[1, 0] = 500.0, 300.0
    h = torch.ones(2, 16)
    assert torch.softmax(layer.router_a(h), -1)[0, 1] == 0  # the underflow this test is about
    sel = layer.route(h)
    assert sel.idx_a.tolist() == [[0, 1], [0, 1]]
    assert torch.equal(sel.weight, torch.ones(2, 2))
    sel.weight.sum().backward()
    assert torch.isfinite(layer.router_a.weight.grad).all() and torch.isfinite(layer.router_b.weight.grad).all()
    # Ordinary routers: the routers' gradient equals the ratio formula's, (s_a / s_a0) (s_b / s_b0), written out
    # here on copies of the router weights (no CFS term, so B's score is its softmax).
    layer = MixLoRALinear(nn.Linear(16, 8), 8, 2, 4.0, cfs="none", router_grad="straight_through",
                          routing_tokens="all")
    h, c = torch.randn(3, 16), torch.randn(3, 2)
    sel = layer.route(h)
    (sel.weight * c).sum().backward()
    w_a = layer.router_a.weight.detach().clone().requires_grad_(True)
    w_b = layer.router_b.weight.detach().clone().requires_grad_(True)
    s_a = torch.softmax(h @ w_a.T, -1).gather(-1, sel.idx_a)
    s_b = torch.softmax(h @ w_b.T, -1).gather(-1, sel.idx_b)
    ((s_a / s_a.detach()) * (s_b / s_b.detach()) * c).sum().backward()
    # The same derivative through two float32 op orders (log-softmax backward vs softmax backward / s0): a few
    # ulp apart on O(1) values.
    torch.testing.assert_close(layer.router_a.weight.grad, w_a.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.router_b.weight.grad, w_b.grad, rtol=1e-5, atol=1e-6)


def test_pool_gradients_pass_gradcheck_float64():
    from torch.func import functional_call

    layer = _mix(d_in=4, d_out=3, E=5, r=2, cfs="paper").double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    a0 = layer.lora_a.detach().clone().requires_grad_(True)
    b0 = layer.lora_b.detach().clone().requires_grad_(True)

    def f(x, a, b):
        return functional_call(layer, {"lora_a": a, "lora_b": b}, (x,))

    # routing is piecewise constant in x; gradcheck's tiny perturbations keep this selection
    with routing(layer, torch.ones(2, 3, dtype=torch.bool)):
        torch.testing.assert_close(f(x, a0, b0), layer.base(x) + _ref_delta(layer, x, a0, b0))
        assert torch.autograd.gradcheck(f, (x, a0, b0))


def _ref_delta(layer, x, pool_a, pool_b):
    """Σ_i (a_{g_A[i]} · x) b_{g_B[i]} · alpha/r, one instance at a time."""
    idx_a, idx_b = layer.route(x.mean(1)).idx_a, layer.route(x.mean(1)).idx_b
    outs = []
    for n in range(x.shape[0]):
        acc = 0
        for i in range(layer.rank):
            acc = acc + (x[n] @ pool_a[idx_a[n, i]]).unsqueeze(-1) * pool_b[idx_b[n, i]]
        outs.append(acc * layer.scaling)
    return torch.stack(outs)


# ----------------------------------------------------------------------------- batch structure, dtype, memory
def test_batch_permutation_permutes_outputs():
    layer = _mix(cfs="released")
    x = torch.randn(5, 4, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with routing(layer, torch.ones(5, 4, dtype=torch.bool)):
        y = layer(x)
    with routing(layer, torch.ones(5, 4, dtype=torch.bool)):
        y_perm = layer(x[perm])
    torch.testing.assert_close(y_perm, y[perm])


def test_per_instance_routing_equals_running_instances_alone():
    layer = _mix(cfs="paper")
    x = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    with routing(layer, mask):
        y = layer(x)
    for n in range(3):
        with routing(layer, mask[n : n + 1]):
            torch.testing.assert_close(layer(x[n : n + 1]), y[n : n + 1])


def test_bf16_input_gives_bf16_output():
    layer = _mix(cfs="paper").to(torch.bfloat16)
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    with routing(layer, torch.ones(2, 3, dtype=torch.bool)):
        assert layer(x).dtype == torch.bfloat16


def test_never_materialises_a_per_instance_delta_w():
    """No tensor saved for backward may hold d_in·d_out elements per instance (the released dense ΔW)."""
    d_in, d_out, B = 48, 40, 3
    layer = MixLoRALinear(nn.Linear(d_in, d_out), 8, 2, 4.0, cfs="paper", router_grad="straight_through")
    nn.init.normal_(layer.lora_b)
    x = torch.randn(B, 4, d_in, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with routing(layer, torch.ones(B, 4, dtype=torch.bool)), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    assert sizes and max(sizes) < B * d_in * d_out / 2


def test_bad_layer_arguments():
    # one rule, checked by the layer and by AdapterConfig alike (mixlora.options.check_rank): 1 <= r < E
    for rank in (4, 5):
        with pytest.raises(ValueError, match=f"rank={rank} must be smaller than num_factors=4"):
            MixLoRALinear(nn.Linear(4, 4), num_factors=4, rank=rank, alpha=1.0)
    with pytest.raises(ValueError, match="num_factors must be a positive integer"):
        MixLoRALinear(nn.Linear(4, 4), num_factors=0, rank=1, alpha=1.0)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1.0)
    with pytest.raises(ValueError, match="cfs='paper_eq' is not a valid option"):
        MixLoRALinear(nn.Linear(4, 4), 4, 2, 1.0, cfs="paper_eq")
    with pytest.raises(ValueError, match="decode_routing"):
        MixLoRALinear(nn.Linear(4, 4), 4, 2, 1.0, decode_routing="cached")
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), rank=1, alpha=1.0)
    layer = _mix(routing_tokens="all")
    with pytest.raises(ValueError, match=r"expects input \[batch, seq, 8\]"):
        layer(torch.randn(4, 8))


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
