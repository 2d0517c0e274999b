"""Injection into a tiny random HF Llama, adapter checkpoints, and routing during generation."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from mixlora import (
    AdapterConfig,
    LoRALinear,
    MixLoRALinear,
    adapter_state_dict,
    inject_adapters,
    last_selections,
    load_adapter,
    routing,
    save_adapter,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def randomise_b(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (LoRALinear, MixLoRALinear)):
                m.lora_b.normal_(0, 0.5)


class WithVision(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision_tower = nn.Sequential(nn.Linear(4, 4))
        self.vision_tower.q_proj = nn.Linear(4, 4)
        self.multi_modal_projector = nn.Linear(4, 32)
        self.llm = tiny_llama()


def test_inject_replaces_exactly_the_targets_and_freezes_the_rest():
    model = WithVision()
    replaced = inject_adapters(model, AdapterConfig(kind="mixlora", num_factors=4, rank=2))
    assert len(replaced) == 2 * len(TARGETS)
    assert all(name.startswith("llm.model.layers.") for name in replaced)
    assert isinstance(model.vision_tower.q_proj, nn.Linear)  # never adapted
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert len(trainable) == 2 * len(replaced)


def test_routers_trainable_only_with_straight_through():
    model = tiny_llama()
    inject_adapters(model, AdapterConfig(num_factors=4, rank=2, router_grad="straight_through"))
    trainable = {n.rsplit(".", 2)[-2] if n.endswith("weight") else n.rsplit(".", 1)[-1]
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_a", "lora_b", "router_a", "router_b", "router_cfs"}


def test_layer_range_and_lora_kind():
    model = tiny_llama(layers=3)
    replaced = inject_adapters(model, AdapterConfig(kind="lora", rank=2, alpha=4, target_modules=["q_proj", "v_proj"],
                                                    layers=[1, 3]))
    assert sorted(replaced) == [f"model.layers.{i}.self_attn.{p}" for i in (1, 2) for p in ("q_proj", "v_proj")]
    assert all(isinstance(m, LoRALinear) for m in replaced.values())


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(num_factors=4, rank=4), "must be smaller than num_factors"),
        (dict(num_factors=4, rank=0), "rank must be a positive integer"),
        (dict(num_factors=4, rank=2, cfs="paper2"), "cfs='paper2' is not a valid option"),
        (dict(num_factors=4, rank=2, routing_tokens="answer"), "routing_tokens='answer'"),
        (dict(kind="dora"), "kind='dora'"),
        (dict(num_factors=4, rank=2, routing_source="tasks"), "routing_source='tasks' is not a valid option"),
        (dict(num_factors=4, rank=2, routing_source="random", router_grad="straight_through"), "must be 'none'"),
        (dict(num_factors=4, rank=2, target_modules=["q_proj", "qkv_proj"]), r"\['qkv_proj'\] match no nn.Linear"),
        (dict(num_factors=4, rank=2, layers=[5, 9]), "selects none of the target modules"),
        (dict(num_factors=4, rank=2, n_experts=3), r"unknown adapter config key\(s\) \['n_experts'\]"),
    ],
)
def test_bad_configurations_raise_clear_errors(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        inject_adapters(tiny_llama(), config)


def test_injecting_twice_is_refused():
    model = tiny_llama()
    inject_adapters(model, dict(kind="lora", rank=2, alpha=2))
    with pytest.raises(ValueError, match="already holds an adapter"):
        inject_adapters(model, dict(kind="lora", rank=2, alpha=2))


@pytest.mark.parametrize("config", [
    AdapterConfig(kind="lora", rank=3, alpha=6),
    AdapterConfig(num_factors=6, rank=2, cfs="paper", router_grad="straight_through"),
    AdapterConfig.released(num_factors=6, rank=2),
])
def test_save_load_round_trip(tmp_path, config):
    model = tiny_llama()
    inject_adapters(model, config)
    randomise_b(model)
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["kind"] == config.kind and meta["rank"] == config.rank
    keys = set(adapter_state_dict(model))
    assert all(".lora_" in k or ".router_" in k for k in keys)
    if config.kind == "mixlora":
        assert any(k.endswith("router_a.weight") for k in keys)  # routers are saved even when frozen

    fresh = tiny_llama()  # same base weights (same seed), different adapter init
    torch.manual_seed(123)
    assert load_adapter(fresh, tmp_path) == config
    for k, v in adapter_state_dict(model).items():
        assert torch.equal(v, adapter_state_dict(fresh)[k]), k
    ids = torch.randint(3, 97, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad(), routing(model, mask), routing(fresh, mask):
        assert torch.equal(model(ids).logits, fresh(ids).logits)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        load_adapter(tiny_llama(), tmp_path / "nothing")
    model = tiny_llama(layers=2)
    inject_adapters(model, AdapterConfig(num_factors=4, rank=2))
    save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match=r"does not match the model \(35 missing"):
        load_adapter(tiny_llama(layers=3), tmp_path)  # layer 2: 7 modules x (lora_a, lora_b, 3 routers)
    other = tiny_llama()
    inject_adapters(other, AdapterConfig(num_factors=8, rank=2))
    with pytest.raises(ValueError, match="already holds a different adapter"):
        load_adapter(other, tmp_path)



def test_shape_mismatch_message_states_each_fact_once(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_llama()
    inject_adapters(model, AdapterConfig(num_factors=4, rank=2))
    save_adapter(model, tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    saved = load_file(str(weights))
    bad = sorted(k for k in saved if k.endswith(".lora_a"))[:4]  # four tensors of another shape
    originals = {k: tuple(saved[k].shape) for k in bad}
    saved.update({k: torch.zeros(3, 5) for k in bad})
    save_file(saved, str(weights))
    with pytest.raises(ValueError) as err:
        load_adapter(tiny_llama(), tmp_path)
    message = str(err.value)
    assert message.count("with other shapes") == 1 and "4 with other shapes (saved vs model), e.g. " in message
    for k in bad[:3]:  # three examples, then the rest counted
        assert f"{k} (3, 5) vs {originals[k]}" in message
    assert bad[3] not in message and "... 1 more" in message
    assert "missing" not in message and "unexpected" not in message


def test_atomic_write_files_get_the_umask_mode_like_open(tmp_path):
    from mixlora.checkpoint import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", lambda tmp: Path(tmp).write_text("{}"))
        (tmp_path / "plain.json").write_text("{}")
        os.umask(0o022)
        atomic_write(tmp_path / "b.json", lambda tmp: Path(tmp).write_text("{}"))
    finally:
        os.umask(old)
    mode = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("a.json", "plain.json", "b.json")}
    assert mode == {"a.json": 0o640, "plain.json": 0o640, "b.json": 0o644}  # 0o666 minus the umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "plain.json"]  # no temp file left
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "c.json", lambda tmp: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert not (tmp_path / "c.json").exists() and len(list(tmp_path.iterdir())) == 3  # the temp file is removed


def _generate(model, ids, attn, use_cache):
    with torch.no_grad(), routing(model, attn.bool()):
        return model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=8, do_sample=False,
                              use_cache=use_cache, pad_token_id=0)


@pytest.mark.parametrize("cfs", ["paper", "released"])
def test_kv_cache_generation_equals_recomputation_with_prefill_routing(cfs):
    model = tiny_llama()
    inject_adapters(model, AdapterConfig(num_factors=6, rank=2, cfs=cfs, decode_routing="prefill"))
    randomise_b(model)
    # left padding: the second prompt is two tokens shorter
    ids = torch.tensor([[5, 17, 33, 8, 41, 9], [0, 0, 12, 60, 7, 22]])
    attn = (ids != 0).long()
    cached = _generate(model, ids, attn, use_cache=True)
    recomputed = _generate(model, ids, attn, use_cache=False)
    assert cached.shape[1] > ids.shape[1]
    assert torch.equal(cached, recomputed)
    # and the adapters matter: the base model (B = 0) generates something else
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MixLoRALinear):
                m.lora_b.zero_()
    assert not torch.equal(_generate(model, ids, attn, use_cache=True), cached)


def test_prefill_selection_is_reused_at_every_decode_step():
    model = tiny_llama()
    inject_adapters(model, AdapterConfig(num_factors=6, rank=2, decode_routing="prefill"))
    randomise_b(model)
    ids = torch.tensor([[5, 17, 33, 8], [4, 12, 60, 7]])
    attn = torch.ones_like(ids)
    with torch.no_grad(), routing(model, attn.bool()):
        model(input_ids=ids, attention_mask=attn)
        prefill = {k: (a.clone(), b.clone()) for k, (a, b) in last_selections(model).items()}
        model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=4, do_sample=False, pad_token_id=0)
    after = last_selections(model)  # selections used by the last decode step
    assert prefill.keys() == after.keys() and len(after) == 14
    for k in prefill:
        assert torch.equal(prefill[k][0], after[k][0]) and torch.equal(prefill[k][1], after[k][1])


@pytest.mark.parametrize("router_grad", ["none", "straight_through"])
def test_gradient_checkpointing_gives_the_same_gradients(router_grad):
    """Checkpoint re-forwards run inside the routing context and route identically (prompt mask, dropout 0)."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_llama()
        inject_adapters(model, AdapterConfig(num_factors=6, rank=2, router_grad=router_grad))
        randomise_b(model)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        ids = torch.tensor([[5, 17, 33, 8, 41, 9], [4, 12, 60, 7, 22, 0]])
        attn = (ids != 0).long()
        mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
        with routing(model, mask):
            model(input_ids=ids, attention_mask=attn, labels=ids.masked_fill(ids == 0, -100)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    if router_grad == "straight_through":
        assert any("router_a" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)
