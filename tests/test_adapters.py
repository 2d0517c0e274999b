"""Adapter layers against independent references: peft's LoRA, hand-computed routing, explicit loops.

LoRA against peft, the special cases where MixLoRA is LoRA, routing and layer outputs computed by hand, the
gradients (gradcheck in float64, straight-through), and batch structure, dtype and memory. The routing ablation
sources and routing in half precision are tested in test_routing_numerics.py.
"""

import math

import pytest
import torch
from torch import nn

from adapter_layers import _linear, _mix
from mixlora import LoRALinear, MixLoRALinear, routing

torch.set_default_dtype(torch.float32)


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
@pytest.mark.parametrize("router_grad", ["none", "straight_through", "straight_through_detached"])
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


@pytest.mark.parametrize("cfs", ["none", "paper"])
def test_detached_straight_through_trains_the_routers_and_passes_no_gradient_through_the_router_input(cfs):
    """Three copies of one layer on the same input: frozen routers (none), straight_through, and
    straight_through_detached. Detached must give the routers exactly straight_through's gradient (the forward and
    the multiplier are the same; only h̄'s own gradient is cut) and the input exactly the frozen layer's gradient
    (the adapter path alone, since the multiplier's value is exactly 1); straight_through's input gradient differs
    from both by the term through h̄."""
    layers = {mode: _mix(E=8, r=2, cfs=cfs, router_grad=mode, seed=3)
              for mode in ("none", "straight_through", "straight_through_detached")}
    for layer in layers.values():  # the same weights (random B: B = 0 would make the multiplier's gradient 0)
        layer.load_state_dict(layers["none"].state_dict())
    x0, g = torch.randn(3, 5, 8), torch.randn(3, 5, 6)
    grads = {}
    for mode, layer in layers.items():
        x = x0.clone().requires_grad_(True)
        with routing(layer, torch.ones(3, 5, dtype=torch.bool)):
            (layer(x) * g).sum().backward()
        grads[mode] = x.grad, layer.router_a.weight.grad, layer.router_b.weight.grad
    none, st, det = grads["none"], grads["straight_through"], grads["straight_through_detached"]
    assert none[1] is None and none[2] is None
    assert torch.equal(det[1], st[1]) and torch.equal(det[2], st[2]) and det[1].abs().sum() > 0
    assert torch.equal(det[0], none[0])
    assert (st[0] - none[0]).abs().max() > 1e-4  # the h̄ path (moderate weights: far above rounding)


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
