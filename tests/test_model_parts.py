"""Tests for the parts of the LLaVA-style model stack (mixlora.model): the splice of image features into the
text embeddings, the two vision towers, the projector and the LLM builder.

References are independent of the code under test: manual passes over the backbones' blocks, hand-written
projector math, LLaVA's mm_projector.bin keys written out by hand, a plain embedding lookup for the text
positions, and saved weights reloaded for the LLM builder. Input ids are plain integers (no tokenizer needed).
The whole stack's forward, backward and generate are tested in test_model.py; the tiny stack is in tiny_llava.py.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mixlora.model import (  # noqa: E402
    CLIP_MEAN,
    HFCLIPVisionTower,
    OpenClipVisionTower,
    build_llava,
    build_llm,
    build_projector,
    load_llava_projector,
    tiny_clip_vision_config,
    tiny_llm_config,
    tiny_open_clip_config,
)
from tiny_llava import BOS, IMG, N, VOCAB, pad_batch, pixels, prompt, tiny  # noqa: E402


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
