"""The prefill factor cache of ``decode_routing="prefill"`` (mixlora.routing_state, "The factor cache").

References: the same computation with the cache off (``RoutingState.cache_factors = False``: every forward gathers
its factors from the pools), a hand-written rank-one sum for the layer output, and gradients of the uncached path.
Counting ``MixLoRALinear.gather`` calls shows when the cache is really used, so equality is not a vacuous pass.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mixlora import MixLoRALinear, routing  # noqa: E402
from mixlora.routing_state import RoutingState  # noqa: E402

from tiny_llava import BOS, IMG, PAD, mixlora_model  # noqa: E402  (the shared tiny MixLoRA model)
N = 64  # (64 / 8) ** 2 image patches in the tiny tower
LAYERS = 14  # q, k, v, o, gate, up, down in each of the tiny LLM's 2 decoder layers

VARIANTS = {
    "corrected": dict(cfs="paper", routing_tokens="prompt", decode_routing="prefill"),
    "released_prefill": dict(cfs="released", routing_tokens="all", routing_precision="layer",
                             decode_routing="prefill"),
    "released": dict(cfs="released", routing_tokens="all", routing_precision="layer", decode_routing="per_step"),
}


def tiny_mixlora(**config):
    """The tiny stack with MixLoRA E4/r2 and random B (test_model's model, so both suites test the same one);
    no EOS, so every row generates the full count."""
    return mixlora_model(**config)[0]


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row)
        mask[i, length - len(row):] = 1
    return ids, mask


def prompt(before: list[int], after: list[int]) -> list[int]:
    return [BOS, *before, *([IMG] * N), *after]


def pixels(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def gathers(monkeypatch):
    """Counts MixLoRALinear.gather calls per layer (a factor gather from the pools)."""
    counts: Counter = Counter()
    original = MixLoRALinear.gather

    def counting(self, sel, x_dtype, y_dtype):
        counts[id(self)] += 1
        return original(self, sel, x_dtype, y_dtype)

    monkeypatch.setattr(MixLoRALinear, "gather", counting)
    return counts


def generate(model, ids, mask, px, cache: bool, steps: int):
    old = RoutingState.cache_factors
    RoutingState.cache_factors = cache
    try:
        return model.generate(ids, mask, px, routing_mask=mask.bool(), max_new_tokens=steps, do_sample=False,
                              output_scores=True, return_dict_in_generate=True)
    finally:
        RoutingState.cache_factors = old


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_generate_equals_uncached_bitwise(variant, gathers):
    model = tiny_mixlora(**VARIANTS[variant])
    rows = [prompt(list(range(100, 130)), [18]), prompt([20], [21, 22]), prompt([30, 31], [32])]  # mixed lengths
    ids, mask = left_padded(rows)
    px = pixels(3)
    steps = 6
    uncached = generate(model, ids, mask, px, cache=False, steps=steps)
    assert len(gathers) == LAYERS and set(gathers.values()) == {steps}  # prefill + 5 decode steps, each gathers
    gathers.clear()
    cached = generate(model, ids, mask, px, cache=True, steps=steps)
    # prefill routing gathers once per generate call; per-step routing gathers at every step, cache or not
    assert set(gathers.values()) == {1 if VARIANTS[variant]["decode_routing"] == "prefill" else steps}
    assert torch.equal(cached.sequences, uncached.sequences)
    for step, (a, b) in enumerate(zip(cached.scores, uncached.scores)):
        assert torch.equal(a, b), step  # not a single logit moves
    # the rows route differently, so one row's factors used for another would change its tokens
    sel = [m.last_selection for m in model.llm.modules() if isinstance(m, MixLoRALinear)]
    assert any(not torch.equal(idx_a[0], idx_a[b]) for idx_a, _ in sel for b in (1, 2))


def test_cache_is_dropped_between_generate_calls_with_different_prompts(gathers):
    model = tiny_mixlora(**VARIANTS["corrected"])
    first, mask = left_padded([prompt([10, 11, 12], [13]), prompt([14], [15, 16])])
    second, mask2 = left_padded([prompt([40, 41, 42], [43]), prompt([44], [45, 46])])
    assert torch.equal(mask, mask2)  # same shapes: only the routing can tell the two calls apart
    px = pixels(2)
    layer = next(m for m in model.llm.modules() if isinstance(m, MixLoRALinear))
    states = []  # the routing state each forward of one layer saw, and whether it held the layer's factors then
    layer.register_forward_hook(lambda m, args, out: states.append((m._routing_state,
                                                                    id(m) in m._routing_state._factors)))
    generate(model, first, mask, px, cache=True, steps=5)
    selections_first = [m.last_selection for m in model.llm.modules() if isinstance(m, MixLoRALinear)]
    gathers.clear()
    after_first = generate(model, second, mask, pixels(2, seed=3), cache=True, steps=5)
    assert set(gathers.values()) == {1}  # the second call gathered its own factors at its prefill
    selections_second = [m.last_selection for m in model.llm.modules() if isinstance(m, MixLoRALinear)]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(selections_first, selections_second))
    reference = generate(model, second, mask, pixels(2, seed=3), cache=False, steps=5)
    assert torch.equal(after_first.sequences, reference.sequences)
    for a, b in zip(after_first.scores, reference.scores):
        assert torch.equal(a, b)
    # one state per call, holding this layer's factors during its call (the uncached call never does) and
    # emptied when the call returned; the layer is left without a state
    first_state, second_state = states[0][0], states[5][0]
    assert first_state is not second_state and [held for _, held in states[:10]] == [True] * 10
    assert [held for _, held in states[10:]] == [False] * 5
    assert not first_state._factors and not second_state._factors and layer._routing_state is None


def _layer(d_in=8, d_out=6, E=6, r=2, **kw):
    torch.manual_seed(0)
    layer = MixLoRALinear(nn.Linear(d_in, d_out), E, r, 4.0, cfs="paper", routing_tokens="prompt",
                          decode_routing="prefill", **kw)
    nn.init.normal_(layer.lora_b)
    return layer


def _hand(layer, x, idx_a, idx_b):
    """base(x) + (alpha/r) Σ_i (a_{g_A[i]} · x) b_{g_B[i]}, one instance and slot at a time."""
    out = layer.base(x).clone()
    for n in range(x.shape[0]):
        for i in range(layer.rank):
            out[n] += layer.scaling * (x[n] @ layer.lora_a[idx_a[n, i]]).unsqueeze(-1) * layer.lora_b[idx_b[n, i]]
    return out


def test_decode_steps_reuse_the_prefill_factors_and_refresh_when_a_pool_changes(gathers):
    layer = _layer()
    prefill, step = torch.randn(3, 5, 8), torch.randn(3, 1, 8)
    with torch.no_grad(), routing(layer, torch.ones(3, 5, dtype=torch.bool)) as state:
        layer(prefill)
        idx_a, idx_b = layer.last_selection
        for _ in range(3):
            torch.testing.assert_close(layer(step), _hand(layer, step, idx_a, idx_b))
        assert gathers[id(layer)] == 1
        layer.lora_b.add_(1.0)  # an in-place update (as an optimizer step): the cached B_x is stale now
        torch.testing.assert_close(layer(step), _hand(layer, step, idx_a, idx_b))
        assert gathers[id(layer)] == 2
        assert state._factors  # held while the context is open ...
    assert not state._factors  # ... and dropped when it exits


def test_a_new_routing_in_the_same_context_replaces_the_cached_factors():
    """Prefill P (factors cached), then a full forward of Q with grad on (routes afresh, caches nothing), then a
    no-grad decode step: it must use Q's selection, not P's cached factors."""
    layer = _layer()
    p_in, step = torch.randn(3, 5, 8), torch.randn(3, 1, 8)
    q_in = -p_in  # negated mean: A's top-r becomes its bottom-r, a different selection
    with routing(layer, torch.ones(3, 5, dtype=torch.bool)) as state:
        with torch.no_grad():
            layer(p_in)
            layer(step)
            p_sel = layer.last_selection
        layer(q_in)
        q_sel = layer.last_selection
        assert not torch.equal(p_sel[0], q_sel[0])
        with torch.no_grad():
            out = layer(step)
        assert state._factors
    torch.testing.assert_close(out, _hand(layer, step, *q_sel))


def test_training_forwards_never_use_or_fill_the_cache(gathers):
    """With grad on, every forward (full or continuation) gathers from the pools and gradients reach them: equal
    to the uncached path's gradients, and nothing is cached."""
    grads = {}
    for cache in (True, False):
        layer = _layer().train()
        prefill, longer = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
        gathers.clear()
        with routing(layer, torch.ones(3, 5, dtype=torch.bool), cache_factors=cache) as state:
            loss = layer(prefill).square().sum() + layer(longer).square().sum()  # full, then a continuation
            loss.backward()
            assert not state._factors
        assert gathers[id(layer)] == 2
        grads[cache] = (layer.lora_a.grad.clone(), layer.lora_b.grad.clone())
        idx_a, idx_b = layer.last_selection
        assert layer.lora_b.grad[idx_b.flatten()].abs().sum() > 0
    for cached, plain in zip(grads[True], grads[False]):
        assert torch.equal(cached, plain)


def test_training_step_of_the_model_leaves_the_cache_empty():
    model = tiny_mixlora(**VARIANTS["corrected"]).train()
    ids, mask = left_padded([prompt([10, 11], [12]), prompt([20], [21, 22])])
    ids, mask = ids.flip(1), mask.flip(1)  # right padding, as the training collator pads
    with routing(model.llm, mask.bool()) as state:
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2), labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        assert not state._factors
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.endswith("lora_a"))


def test_decode_step_in_another_dtype_gathers_again():
    """Prefill in float32, a decode step under bf16 autocast: B_x must be bf16 (the base output's dtype) there,
    so the float32 entry is not used; the result equals the uncached path's."""
    layer = _layer()
    prefill, step = torch.randn(2, 4, 8), torch.randn(2, 1, 8)
    outs = {}
    for cache in (True, False):
        with torch.no_grad(), routing(layer, torch.ones(2, 4, dtype=torch.bool), cache_factors=cache):
            layer(prefill)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outs[cache] = layer(step)
    assert outs[True].dtype == torch.bfloat16
    assert torch.equal(outs[True], outs[False])


def test_cache_factors_must_be_a_bool():
    with pytest.raises(TypeError, match="cache_factors"):
        RoutingState(None, cache_factors="yes")


# ---------------------------------------------------------------- scripts/bench_decode.py's one-linear measurement
def _bench_decode():
    import importlib.util
    import sys
    from pathlib import Path

    if "bench_decode" in sys.modules:
        return sys.modules["bench_decode"]
    spec = importlib.util.spec_from_file_location(
        "bench_decode", Path(__file__).resolve().parents[1] / "scripts" / "bench_decode.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_decode"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_layer_benchmark_sums_the_linears_of_a_step_and_implies_the_ratio():
    bench = _bench_decode()
    shape = bench.LLMShape(hidden=16, intermediate=40, heads=2, layers=3, vocab=50)
    out = bench.bench_layers(shape, batch=2, prompt_len=5, rank=2, factors=6, repeats=1,
                             device=torch.device("cpu"), dtype=torch.float32)
    assert {k: (e["d_in"], e["d_out"], e["count"]) for k, e in out["shapes"].items()} == {
        "q/k/v/o": (16, 16, 4), "gate/up": (16, 40, 2), "down": (40, 16, 1)}
    names = ["frozen", "lora_r2", "mixlora_e6_r2_prefill", "mixlora_e6_r2_prefill_nocache", "mixlora_e6_r2_per_step"]
    for mode in ("layer", "adapter"):
        e = out["shapes"]
        for name in names:
            expected = 3 * (4 * e["q/k/v/o"][mode][name] + 2 * e["gate/up"][mode][name] + e["down"][mode][name])
            assert out["per_step"][mode][name] == pytest.approx(expected) and expected > 0
    # (frozen step + LoRA's adapters) / (frozen step + MixLoRA's), adapters net of the copied base output
    hand = {"per_step": {"adapter": {"frozen": 0.1, "lora": 0.3, "mix": 0.5}}}
    assert bench.implied_ratio(hand, 1.0, "lora", "mix") == pytest.approx(1.2 / 1.4)
