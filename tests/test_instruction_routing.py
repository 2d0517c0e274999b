"""``routing_tokens="instruction"``: the instruction mask on real collated batches, token by token, and the layer's
mean over exactly those tokens.

References are independent of the code under test: positions counted by hand from string lengths with a
byte-level tokenizer that has no merges (one token per ASCII character), the decoded text of the masked tokens
of a real BPE (it must be the instruction, character for character), and a router decision recomputed in
float64 from a mean written with plain indexing.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import mixlora
from mixlora import AdapterConfig, MixLoRALinear, inject_adapters
from mixlora.data.collator import GenerationCollator, TrainingCollator
from mixlora.data.dataset import ConversationDataset
from mixlora.data.images import ImageProcessor
from mixlora.data.templates import encode_segments, get_template, render_prompt
from mixlora.data.tokenizer import build_tokenizer
from mixlora.tasks.evaluate import encode_question
from mixlora.model import build_tiny_llava

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
N = 64  # image positions of the tiny tower


@pytest.fixture(scope="module")
def byte_tokenizer():
    """No merges: one token per byte; ids 0-4 are <unk>, <s>, </s>, <pad>, <image>."""
    return build_tokenizer(["some text to train on"], vocab_size=261)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    corpus = ["What colour is the object? Answer with one word.", "Is the object large? Answer yes or no.",
              "Describe the image.", "a large red square in the top left"] * 50
    return build_tokenizer(corpus, vocab_size=400)


def _write_records(tmp_path, records):
    from PIL import Image

    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "images" / "a.png")
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return path


def _record(n, question, answer):
    return {"id": f"r{n}", "image": "a.png", "task_name": "t+x",
            "conversations": [{"from": "human", "value": question + "\n<image>"}, {"from": "gpt", "value": answer}]}


def _dataset(tmp_path, tokenizer, records):
    path = _write_records(tmp_path, records)
    return ConversationDataset(str(path), tokenizer, ImageProcessor(image_size=64), N, image_folder=str(tmp_path / "images"),
                               template="vicuna_v1", max_length=512, instruction_spans=True, on_error="raise")


def test_training_mask_counted_by_hand(tmp_path, byte_tokenizer):
    """<s> + system + " USER: " + N image positions + "\\n" + instruction + " ASSISTANT:" + answer ...: with one token
    per character the instruction occupies exactly len(instruction) positions starting after the newline."""
    questions = ["Is it red?", "Which size is the object? Answer with one word."]
    data = _dataset(tmp_path, byte_tokenizer, [_record(n, q, "yes") for n, q in enumerate(questions)])
    batch = TrainingCollator(byte_tokenizer.pad_token_id)([data[0], data[1]])
    head = 1 + len(VICUNA_SYSTEM + " USER: ")
    for b, question in enumerate(questions):
        start = head + N + 1  # after the image positions and the "\n"
        expected = torch.zeros(batch["input_ids"].shape[1], dtype=torch.bool)
        expected[start : start + len(question)] = True
        assert torch.equal(batch["instruction_mask"][b], expected)
        assert byte_tokenizer.decode(batch["input_ids"][b][expected].tolist()) == question
    # never padding, never a supervised token, never an image position, always inside the prompt mask
    mask = batch["instruction_mask"]
    assert not (mask & (batch["attention_mask"] == 0)).any()
    assert not (mask & (batch["labels"] != -100)).any()
    assert not (mask & (batch["input_ids"] == 4)).any()
    assert not (mask & ~batch["routing_mask"]).any()


def test_training_and_generation_masks_decode_to_the_instruction(tmp_path, bpe_tokenizer):
    """A real BPE (merges across characters): the masked tokens decode to the instruction exactly, in right-padded
    training batches and left-padded generation batches alike."""
    questions = ["What colour is the object? Answer with one word.", "Is the object large? Answer yes or no.",
                 "Describe the image."]
    data = _dataset(tmp_path, bpe_tokenizer, [_record(n, q, "a large red square") for n, q in enumerate(questions)])
    batch = TrainingCollator(bpe_tokenizer.pad_token_id)([data[i] for i in range(3)])
    for b, question in enumerate(questions):
        ids = batch["input_ids"][b][batch["instruction_mask"][b]].tolist()
        assert bpe_tokenizer.decode(ids).strip() == question
    samples = []
    for q in questions:
        ids, span = encode_question(q, bpe_tokenizer, "vicuna_v1", N, instruction=True)
        plain = encode_question(q, bpe_tokenizer, "vicuna_v1", N)
        assert ids == plain  # asking for the span never changes the ids
        samples.append({"input_ids": ids, "instruction_span": span, "pixel_values": torch.zeros(3, 64, 64)})
    gen = GenerationCollator(bpe_tokenizer.pad_token_id)(samples)
    assert "instruction_span" not in gen
    for b, question in enumerate(questions):
        ids = gen["input_ids"][b][gen["instruction_mask"][b]].tolist()
        assert bpe_tokenizer.decode(ids).strip() == question
        assert not (gen["instruction_mask"][b] & (gen["attention_mask"][b] == 0)).any()


def test_training_prompt_ids_unchanged_by_spans(tmp_path, bpe_tokenizer):
    records = [_record(0, "What colour is the object? Answer with one word.", "red")]
    with_spans = _dataset(tmp_path, bpe_tokenizer, records)[0]
    path = tmp_path / "train.json"
    without = ConversationDataset(str(path), bpe_tokenizer, ImageProcessor(image_size=64), N,
                                  image_folder=str(tmp_path / "images"), template="vicuna_v1", max_length=512)[0]
    assert torch.equal(with_spans["input_ids"], without["input_ids"])
    assert torch.equal(with_spans["labels"], without["labels"])
    assert "instruction_span" not in without


def test_prompt_without_image_marks_the_question(bpe_tokenizer):
    segments = render_prompt(get_template("vicuna_v1"), "Is the object large?", with_image=False)
    ids, _, (start, end) = encode_segments(segments, bpe_tokenizer, instruction=True)
    assert bpe_tokenizer.decode(ids[start:end]).strip() == "Is the object large?"


def test_layer_averages_the_instruction_tokens_only():
    """The router input is the mean over the instruction positions: recomputed here in float64 with plain indexing,
    the top-r of the router logits must name the layer's chosen A factors."""
    torch.manual_seed(0)
    layer = MixLoRALinear(torch.nn.Linear(16, 8), num_factors=6, rank=2, alpha=4.0, routing_tokens="instruction")
    x = torch.randn(3, 10, 16)
    instruction = torch.zeros(3, 10, dtype=torch.bool)
    instruction[0, 2:5] = True
    instruction[1, 6:9] = True
    instruction[2, 0:10] = True
    prompt = torch.ones(3, 10, dtype=torch.bool)
    with mixlora.routing(layer, prompt, instruction_mask=instruction):
        layer(x)
    idx_a, _ = layer.last_selection
    for b in range(3):
        h = x[b][instruction[b]].double().mean(0)
        logits = h @ layer.router_a.weight.double().T  # Router is an nn.Linear without bias
        expected = torch.topk(logits, 2).indices
        assert sorted(idx_a[b].tolist()) == sorted(expected.tolist())


def test_missing_instruction_mask_is_a_clear_error():
    layer = MixLoRALinear(torch.nn.Linear(16, 8), num_factors=6, rank=2, alpha=4.0, routing_tokens="instruction")
    with pytest.raises(RuntimeError, match="instruction mask"):
        with mixlora.routing(layer, torch.ones(1, 4, dtype=torch.bool)):
            layer(torch.randn(1, 4, 16))
    with pytest.raises(RuntimeError, match="routing_tokens='instruction' needs a routing mask"):
        layer(torch.randn(1, 4, 16))


def test_collator_refuses_a_row_without_instruction():
    samples = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, -100, 3]),
                "pixel_values": torch.zeros(3, 8, 8), "task_name": "t", "index": 0, "instruction_span": None}]
    with pytest.raises(ValueError, match="no instruction tokens"):
        TrainingCollator(0)(samples)


def test_generation_is_batch_invariant_under_instruction_routing(bpe_tokenizer):
    """Each prompt decodes alone as it does next to a longer one (left padding never enters the instruction)."""
    tok = bpe_tokenizer
    model = build_tiny_llava(vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapters = inject_adapters(model.llm, AdapterConfig(kind="mixlora", num_factors=6, rank=2, alpha=4.0,
                                                            routing_tokens="instruction"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in adapters.values():
            module.lora_b.copy_(0.3 * torch.randn(module.lora_b.shape, generator=g))
    model.eval()
    assert model.routes_on_instruction()
    questions = ["Is the object large?", "What colour is the object? Answer with one word. Describe the image."]
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    samples = []
    for b, q in enumerate(questions):
        ids, span = encode_question(q, tok, "vicuna_v1", N, instruction=True)
        samples.append({"input_ids": ids, "instruction_span": span, "pixel_values": pixels[b]})
    collate = GenerationCollator(tok.pad_token_id)

    def generate(rows):
        batch = collate(rows)
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              pixel_values=batch["pixel_values"], routing_mask=batch["routing_mask"],
                              instruction_mask=batch["instruction_mask"], max_new_tokens=4, do_sample=False)

    together = generate(samples)
    for b in range(2):
        assert together[b].tolist() == generate([samples[b]])[0].tolist()


def test_tokenised_rows_are_cached_across_runs_and_keyed_by_the_tokenizer(tmp_path, bpe_tokenizer):
    """A second dataset over the same file with an equal tokenizer (saved and reloaded, then used) reuses the
    tokenised cache file; a different tokenizer does not (its rows differ)."""
    from mixlora.data.tokenizer import load_tokenizer

    records = [_record(n, q, "red") for n, q in enumerate(["What colour is the object?", "Is it large?"] * 5)]
    path = _write_records(tmp_path, records)

    def build(tokenizer):
        return ConversationDataset(str(path), tokenizer, ImageProcessor(image_size=64), N,
                                   image_folder=str(tmp_path / "images"), template="vicuna_v1", max_length=512,
                                   cache_dir=str(tmp_path / "hf"))

    first = build(bpe_tokenizer)
    files = {f["filename"] for f in first._rows.cache_files}
    stamps = {f: os.stat(f).st_mtime_ns for f in files}
    bpe_tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = load_tokenizer(str(tmp_path / "tok"))
    reloaded("warm up its padding state", padding=True)
    second = build(reloaded)
    assert {f["filename"] for f in second._rows.cache_files} == files
    assert {f: os.stat(f).st_mtime_ns for f in files} == stamps
    assert torch.equal(first[3]["input_ids"], second[3]["input_ids"])
    other = build_tokenizer(["a completely different corpus of words"] * 20, vocab_size=300)
    third = build(other)
    assert {f["filename"] for f in third._rows.cache_files} != files
