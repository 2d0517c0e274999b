"""Tokenizer, image preprocessing, datasets, collators and the length-grouped sampler.

Expected values are computed by hand (pixel arithmetic, padded tensors written out) or taken from the
fixtures' public formats (tests/fixtures/data, see make_fixtures.py for what each record exercises).
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixlora.constants import IGNORE_INDEX
from mixlora.data.collator import TRAINING_KEYS, GenerationCollator, TrainingCollator
from mixlora.data.dataset import ConversationDataset, DataError, LengthGroupedBatchSampler, PromptDataset
from mixlora.data.images import ImageMemo, ImageProcessor
from mixlora.data.templates import get_template
from mixlora.data.tokenizer import build_tokenizer, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "data"
VISION_FLAN = FIXTURES / "vision_flan"
N_IMG = 4  # image positions per sample in these tests


@pytest.fixture(scope="module")
def tok():
    corpus = [get_template("vicuna_v1").system, get_template("llava_v1").system,
              "USER: ASSISTANT: Identify the appliance microwave refrigerator traffic sign"] * 3
    return build_tokenizer(corpus, vocab_size=500)


@pytest.fixture(scope="module")
def processor():
    return ImageProcessor(image_size=8)


def make_dataset(tmp_path, tok, processor, records=None, **kwargs):
    annotations = VISION_FLAN / "annotation_191-task_1k.json"
    if records is not None:
        annotations = tmp_path / "annotations.json"
        annotations.write_text(json.dumps(records))
    kwargs.setdefault("image_folder", str(VISION_FLAN / "images_191task_1k"))
    return ConversationDataset(str(annotations), tok, processor, N_IMG, cache_dir=str(tmp_path / "cache"), **kwargs)


def record(image="GTSRB+image_classification/00001.png", task="GTSRB+image_classification",
           human="What traffic sign is shown?\n<image>", answer="stop"):
    rec = {"id": "x", "task_name": task,
           "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    return rec


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_round_trips_non_ascii_and_image_is_one_token(tok):
    text = "héllo wörld — 你好, naïve café 🙂 . , !"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    image_id = tok.convert_tokens_to_ids("<image>")
    assert tok("x<image>y", add_special_tokens=False)["input_ids"] == [
        *tok("x", add_special_tokens=False)["input_ids"], image_id, *tok("y", add_special_tokens=False)["input_ids"]]
    assert tok("<image><image>", add_special_tokens=False)["input_ids"] == [image_id, image_id]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, image_id) == (0, 1, 2, 3, 4)
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")


def test_tokenizer_cache_is_keyed_on_corpus(tmp_path):
    a = build_tokenizer(["alpha beta gamma"] * 3, vocab_size=300, save_dir=str(tmp_path))
    again = build_tokenizer(["alpha beta gamma"] * 3, vocab_size=300, save_dir=str(tmp_path))
    other = build_tokenizer(["delta epsilon"] * 3, vocab_size=300, save_dir=str(tmp_path))
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and all(f.startswith("bpe-") for f in folders)
    assert again.get_vocab() == a.get_vocab() and other.get_vocab() != a.get_vocab()
    assert again.convert_tokens_to_ids("<image>") == 4


def test_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="at least 261"):
        build_tokenizer(["a"], vocab_size=100)


def test_load_tokenizer_adds_image_token_and_pads_with_unk(tmp_path):
    """A Vicuna-like tokenizer folder: unk/bos/eos, no pad, no <image>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["a chat between a user"], trainers.BpeTrainer(
        vocab_size=270, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        tmp_path / "vicuna")
    loaded = load_tokenizer(str(tmp_path / "vicuna"))
    assert loaded.pad_token == "<unk>" and loaded.pad_token_id == 0
    image_id = loaded.convert_tokens_to_ids("<image>")
    assert image_id == 270 and len(loaded) == 271
    assert loaded("a<image>b", add_special_tokens=False)["input_ids"][1] == image_id
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- images

def test_center_crop_by_hand():
    """4x2 image, size 2: the short side already fits (no resize); the crop keeps columns 1 and 2."""
    image = Image.new("RGB", (4, 2))
    values = [[(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)],
              [(51, 51, 51), (102, 102, 102), (153, 0, 0), (9, 9, 9)]]
    for y, row in enumerate(values):
        for x, rgb in enumerate(row):
            image.putpixel((x, y), rgb)
    out = ImageProcessor(2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    expected = torch.tensor([[values[y][x] for x in (1, 2)] for y in (0, 1)], dtype=torch.float32)  # [H, W, 3]
    expected = (expected / 255 - 0.5) / 0.5
    assert out.shape == (3, 2, 2)
    torch.testing.assert_close(out, expected.permute(2, 0, 1))


def test_resize_shortest_side_then_crop():
    """6x3 constant image, size 2 -> resized to 4x2 (short side 2), cropped to 2x2; bicubic keeps a constant."""
    out = ImageProcessor(2)(Image.new("RGB", (6, 3), (255, 0, 102)))
    mean, std = torch.tensor(ImageProcessor(2).mean), torch.tensor(ImageProcessor(2).std)
    expected = ((torch.tensor([255, 0, 102]) / 255 - mean) / std).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_pad_to_square_by_hand():
    """2x1 image padded to 2x2 with the pad colour below it (paste at y=(2-1)//2=0), no resize, no crop."""
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), (255, 255, 255))
    image.putpixel((1, 0), (0, 0, 0))
    out = ImageProcessor(2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_mode="pad_to_square",
                         pad_color=(51, 102, 153))(image)
    expected = torch.tensor([[[1.0, 0.0], [0.2, 0.2]], [[1.0, 0.0], [0.4, 0.4]], [[1.0, 0.0], [0.6, 0.6]]])
    torch.testing.assert_close(out, expected)
    assert ImageProcessor(4, resize_mode="pad_to_square").pad_color == (122, 116, 104)  # int(255 * CLIP mean)


def test_image_processor_options():
    assert torch.equal(ImageProcessor(3).blank(), torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="resize_mode='pad'.*'pad_to_square'"):
        ImageProcessor(2, resize_mode="pad")


# ---------------------------------------------------------------- training dataset

def test_fixture_counts_and_messages(tmp_path, tok, processor):
    ds = make_dataset(tmp_path, tok, processor)
    report = ds.report()
    assert (report["records"], report["samples"], len(ds)) == (8, 4, 4)
    assert report["skipped"] == {"malformed_record": 3, "missing_image": 1, "overlong": 0}
    messages = "\n".join(report["problems"])
    assert "record 5 (task_name='ITM'): turn 1 has role 'assistant'; expected 'gpt'" in messages
    assert "record 6 (task_name='ITM'): 'image' is given but no turn contains '<image>'" in messages
    assert "record 7 (task_name='VQA_object_presence'): turn 1 (gpt) has an empty answer" in messages
    assert "record 3 (task_name='GTSRB+image_classification'): image file" in messages
    assert "00002.png' does not exist" in messages


def test_sample_has_image_tokens_in_place(tmp_path, tok, processor):
    ds = make_dataset(tmp_path, tok, processor)
    sample = ds[2]  # fixture record 2 (GTSRB)
    assert (sample["task_name"], sample["index"]) == ("GTSRB+image_classification", 2)
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    image_id = tok.convert_tokens_to_ids("<image>")
    positions = [t for t, i in enumerate(ids) if i == image_id]
    head = tok(get_template("vicuna_v1").system + " USER: ", add_special_tokens=False)["input_ids"]
    assert positions == list(range(1 + len(head), 1 + len(head) + N_IMG))  # right after BOS + "... USER: "
    assert all(labels[t] == IGNORE_INDEX for t in positions)
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == " speed limit (30km/h)</s>"
    expected = ImageProcessor(8).load(VISION_FLAN / "images_191task_1k/GTSRB+image_classification/00001.png")
    torch.testing.assert_close(sample["pixel_values"], expected)
    assert ds.lengths[2] == len(ids)


def test_on_error_raise_names_the_record(tmp_path, tok, processor):
    with pytest.raises(DataError, match=r"record 5 \(task_name='ITM'\).*\(and 2 more such problems\)"):
        make_dataset(tmp_path, tok, processor, on_error="raise")
    with pytest.raises(DataError, match=r"record 1 \(task_name='GTSRB.*00002.png' does not exist"):
        make_dataset(tmp_path, tok, processor, on_error="raise",
                     records=[record(), record(image="GTSRB+image_classification/00002.png")])
    with pytest.raises(DataError, match=r"record 0 \(task_name=None\): missing 'task_name'"):
        make_dataset(tmp_path, tok, processor, on_error="raise", records=[record(task=None)])


@pytest.mark.parametrize("memory_mb", [0, 1])
def test_corrupt_image_is_replaced_and_counted(tmp_path, tok, processor, memory_mb):
    ds = make_dataset(tmp_path, tok, processor, image_memory_mb=memory_mb)
    corrupt = [p for p in range(len(ds)) if ds._rows[p]["task_name"] == "VQA_counting"]
    assert corrupt == [3]
    replaced = ds[3]  # wraps around to position 0 (fixture record 0)
    assert replaced["index"] == 0 and ds.report()["replaced"] == {"corrupt_image": 1}
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, collate_fn=TrainingCollator(3))
    (batch,) = list(loader)
    assert batch["index"] == [0, 1, 2, 0]
    assert ds.report()["replaced"] == {"corrupt_image": 2}  # the worker's replacement is counted too


def test_corrupt_image_raises_with_on_error_raise(tmp_path, tok, processor):
    ds = make_dataset(tmp_path, tok, processor, on_error="raise",
                      records=[record(), record(image="VQA_counting/broken.jpg", task="VQA_counting")])
    assert ds[0]["index"] == 0
    with pytest.raises(DataError, match=r"record 1 \(task_name='VQA_counting'\): cannot read image .*broken.jpg"):
        ds[1]


def test_image_processor_is_the_documented_formula_bit_for_bit():
    """At the target size (no resize, no crop) the output is ((x / 255) - mean) / std per channel on [3, H, W].
    Each element passes through the same three correctly rounded float32 operations (IEEE 754 division and
    subtraction are exact-rounded on every platform), so the results are equal bit for bit, not just close."""
    rng = np.random.default_rng(0)
    processor = ImageProcessor(16)
    mean, std = torch.tensor(processor.mean).view(3, 1, 1), torch.tensor(processor.std).view(3, 1, 1)
    for _ in range(3):
        array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        expected = (torch.from_numpy(array).permute(2, 0, 1).to(torch.float32) / 255 - mean) / std
        out = processor(Image.fromarray(array))
        assert out.is_contiguous() and torch.equal(out, expected)


def _png(path, colour):
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def test_image_memo_returns_the_processed_pixels_and_decodes_each_file_once(tmp_path, monkeypatch):
    processor = ImageProcessor(8)
    a, b = _png(tmp_path / "a.png", (255, 0, 0)), _png(tmp_path / "b.png", (0, 0, 255))
    memo = ImageMemo(processor, max_mb=1)
    decoded = []
    real_load = ImageProcessor.load
    monkeypatch.setattr(ImageProcessor, "load", lambda self, path: decoded.append(Path(path).name) or real_load(self, path))
    first = memo.load(a)
    first.zero_()  # a caller's in-place change must not reach the memo
    assert torch.equal(memo.load(a), real_load(processor, a)) and torch.equal(memo.load(b), real_load(processor, b))
    assert decoded == ["a.png", "b.png"] and (memo.hits, memo.misses, len(memo)) == (1, 2, 2)
    assert memo.bytes == 2 * 3 * 8 * 8 * 4  # two float32 [3, 8, 8] images
    # A rewritten file (new content, new modification time) is decoded again.
    _png(a, (0, 255, 0))
    os.utime(a, ns=(os.stat(a).st_atime_ns, os.stat(a).st_mtime_ns + 10**9))
    assert torch.equal(memo.load(a), real_load(processor, a)) and decoded[-1] == "a.png"
    with pytest.raises(FileNotFoundError):
        memo.load(tmp_path / "missing.png")


def test_image_memo_keeps_only_what_fits_its_budget(tmp_path):
    processor = ImageProcessor(8)
    paths = [_png(tmp_path / f"{i}.png", (i * 40, 0, 0)) for i in range(3)]
    memo = ImageMemo(processor, max_mb=2 * 768 / 2**20)  # room for two [3, 8, 8] float32 images (768 bytes each)
    for _ in range(2):
        assert all(torch.equal(memo.load(p), processor.load(p)) for p in paths)
    assert len(memo) == 2 and memo.bytes == 2 * 768 and (memo.hits, memo.misses) == (2, 4)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_mb must be > 0"):
            ImageMemo(processor, max_mb=bad)


def test_dataset_items_are_identical_with_the_image_memo(tmp_path, tok, processor):
    plain = make_dataset(tmp_path, tok, processor, records=[record(), record(), record(image=None)])
    memo = make_dataset(tmp_path, tok, processor, records=[record(), record(), record(image=None)], image_memory_mb=1)
    for _ in range(2):  # the second pass is served from memory
        for i in range(len(plain)):
            assert torch.equal(plain[i]["pixel_values"], memo[i]["pixel_values"])
    assert (memo._images.hits, memo._images.misses) == (3, 1)  # one file, read 4 times
    with pytest.raises(ValueError, match="image_memory_mb must be >= 0"):
        make_dataset(tmp_path, tok, processor, records=[record()], image_memory_mb=-1)


def test_overlong_policies(tmp_path, tok, processor):
    long = record(answer="stop " * 40)
    base = make_dataset(tmp_path, tok, processor, records=[record(), long], max_length=1000)
    full_length, short_length = base.lengths[1], base.lengths[0]
    limit = short_length + 5  # the short record fits, the long one does not
    cut = make_dataset(tmp_path, tok, processor, records=[record(), long], max_length=limit)
    assert cut.report()["truncated"] == 1 and len(cut) == 2
    sample, full = cut[1], base[1]
    assert len(sample["input_ids"]) == limit == cut.lengths[1] < full_length
    assert torch.equal(sample["input_ids"], full["input_ids"][:limit])  # the tail is cut, nothing else
    assert sample["input_ids"][-1] != tok.eos_token_id  # no </s> re-appended to a cut answer
    assert (sample["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum() == N_IMG
    assert (sample["labels"] != IGNORE_INDEX).any()

    skipped = make_dataset(tmp_path, tok, processor, records=[record(), long], max_length=limit, overlong="skip")
    assert len(skipped) == 1 and skipped.report()["skipped"]["overlong"] == 1
    with pytest.raises(DataError, match=rf"record 1 .*: {full_length} tokens > max_length={limit}"):
        make_dataset(tmp_path, tok, processor, records=[record(), long], max_length=limit, overlong="error")
    # Under truncate_answer, a prompt that alone fills max_length cannot be cut: skipped and counted.
    prompt_only = make_dataset(tmp_path, tok, processor, max_length=limit,
                               records=[record(answer="x " * 40), record(human="q " * 80 + "<image>")])
    assert len(prompt_only) == 1 and prompt_only.report()["skipped"]["overlong"] == 1
    assert "the prompt alone has" in prompt_only.report()["problems"][0]
    with pytest.raises(ValueError, match="overlong='cut' is not a valid option"):
        make_dataset(tmp_path, tok, processor, overlong="cut")


def test_truncation_warning_names_the_truncated_record(tmp_path, tok, processor, caplog):
    long = record(answer="stop " * 40)
    full_length = make_dataset(tmp_path, tok, processor, records=[long], max_length=1000).lengths[0]
    limit = full_length - 5
    caplog.clear()
    with caplog.at_level("WARNING", logger="mixlora.data.dataset"):
        make_dataset(tmp_path, tok, processor, records=[record(answer="ok"), long], max_length=limit)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 truncated" in warning and "first problem" not in warning and warning.rstrip()[-1] != "-"
    assert re.search(rf"; first truncated: .*record 1 .*: {full_length} tokens > max_length={limit}; answer "
                     "truncated$", warning), warning


def test_text_only_record_gets_blank_image_and_image_tokens(tmp_path, tok, processor):
    ds = make_dataset(tmp_path, tok, processor, records=[record(image=None, human="Say hi.")])
    sample = ds[0]
    assert ds.report()["text_only"] == 1
    assert torch.equal(sample["pixel_values"], torch.zeros(3, 8, 8))
    assert (sample["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum() == N_IMG
    with pytest.raises(DataError, match="a turn contains '<image>' but the record has no 'image'"):
        make_dataset(tmp_path, tok, processor, on_error="raise", records=[record(image=None)])


# ---------------------------------------------------------------- collators

def test_training_collator_by_hand():
    a = {"input_ids": [1, 10, 11, 12, 13], "labels": [-100, -100, -100, 12, 13], "pixel_values": torch.ones(3, 2, 2),
         "task_name": "t1", "index": 7}
    b = {"input_ids": [1, 20, 21], "labels": [-100, -100, 21], "pixel_values": torch.zeros(3, 2, 2),
         "task_name": "t2", "index": 3}
    batch = TrainingCollator(pad_token_id=0)([a, b])
    assert tuple(batch) == TRAINING_KEYS
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, 13], [1, 20, 21, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 12, 13], [-100, -100, 21, -100, -100]]
    assert batch["routing_mask"].tolist() == [[True, True, True, False, False], [True, True, False, False, False]]
    assert batch["routing_mask"].dtype == torch.bool and batch["input_ids"].dtype == torch.long
    assert batch["pixel_values"].shape == (2, 3, 2, 2) and batch["pixel_values"][0].sum() == 12
    assert batch["task_name"] == ["t1", "t2"] and batch["index"] == [7, 3]
    padded = TrainingCollator(pad_token_id=0, pad_to_multiple_of=4)([a, b])
    assert padded["input_ids"].shape == (2, 8) and padded["labels"][:, 5:].eq(-100).all()


def test_generation_collator_left_pads():
    a = {"input_ids": [1, 10, 11], "pixel_values": torch.ones(3, 2, 2), "task_name": "t", "index": 0,
         "record": {"k": 1}}
    b = {"input_ids": [1, 20], "pixel_values": torch.ones(3, 2, 2), "task_name": "t", "index": 1, "record": {"k": 2}}
    batch = GenerationCollator(pad_token_id=9)([a, b])
    assert batch["input_ids"].tolist() == [[1, 10, 11], [9, 1, 20]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["routing_mask"].tolist() == [[True, True, True], [False, True, True]]
    assert batch["record"] == [{"k": 1}, {"k": 2}] and batch["index"] == [0, 1]


# ---------------------------------------------------------------- evaluation prompts

def test_released_eval_jsonl(tok, processor):
    ds = PromptDataset(str(FIXTURES / "released_eval" / "cifar_10.jsonl"), tok, processor, N_IMG,
                       prompt_suffix="Answer the question using a single word or phrase.")
    assert len(ds) == 2 and ds.task_name == "cifar_10"
    sample = ds[1]
    expected = (get_template("llava_v1").system + " USER: " + "<image>" * N_IMG + "\nWhat is the object in the "
                "image?\nOptions: airplane, cat, ship\nAnswer the question using a single word or phrase. ASSISTANT:")
    assert tok.decode(sample["input_ids"][1:]) == expected and sample["input_ids"][0] == tok.bos_token_id
    assert sample["record"]["target"] == "ship" and sample["record"]["unique_id"] == "cifar_10_1"
    torch.testing.assert_close(sample["pixel_values"], processor.load(FIXTURES / "released_eval/images/cifar_1.png"))


def test_eval_jsonl_errors_name_the_line(tmp_path, tok, processor):
    shutil.copytree(FIXTURES / "released_eval" / "images", tmp_path / "images")
    lines = ['{"unique_id": "a", "prompt": "Q", "target": "x", "image_path": "images/cifar_0.png"}', "",
             '{"unique_id": "b", "prompt": "Q", "target": "y", "image_path": "images/missing.png"}',
             '{"unique_id": "c", "prompt": "Q", "target": "z"}', "{not json"]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"task.jsonl:3 \(task 'task'\): image .*missing.png' does not exist"):
        PromptDataset(str(path), tok, processor, N_IMG)
    ds = PromptDataset(str(path), tok, processor, N_IMG, on_error="skip")
    assert len(ds) == 1 and ds.report()["skipped"] == 3
    assert "task.jsonl:4 (task 'task'): missing field 'image_path'" in ds.report()["problems"][1]
    assert "task.jsonl:5" in ds.report()["problems"][2]


# ---------------------------------------------------------------- sampler

def test_length_grouped_batches_by_hand():
    lengths = torch.randperm(100, generator=torch.Generator().manual_seed(1)).tolist()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=10, seed=3, mega_batch_factor=10)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10
    # One mega-batch covers everything: each batch holds ten consecutive lengths of the descending sort.
    assert sorted(sorted(lengths[i] for i in b) for b in batches) == [list(range(k, k + 10)) for k in range(0, 100, 10)]
    assert [lengths[b[0]] for b in batches] != sorted((lengths[b[0]] for b in batches), reverse=True)  # shuffled
    assert list(LengthGroupedBatchSampler(lengths, 10, seed=3, mega_batch_factor=10)) == batches  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_length_grouped_short_batch_last_and_distributed():
    lengths = list(range(23))
    batches = list(LengthGroupedBatchSampler(lengths, batch_size=5, seed=0, mega_batch_factor=2))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3] and sorted(sum(batches, [])) == lengths
    ranks = [list(LengthGroupedBatchSampler(lengths, 5, seed=0, mega_batch_factor=2, num_replicas=2, rank=r))
             for r in (0, 1)]
    assert [len(r) for r in ranks] == [3, 3] == [len(LengthGroupedBatchSampler(lengths, 5, num_replicas=2, rank=r))
                                                 for r in (0, 1)]
    assert all(len(b) == 5 for r in ranks for b in r)
    assert set(sum(ranks[0] + ranks[1], [])) == set(lengths)
