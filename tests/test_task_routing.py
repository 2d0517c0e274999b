"""Task-definition routing through data, model, training and eval (the paper's task-specific routing ablation:
docs/method.md#routing-sources-the-routing-ablation).

References are independent of the code under test: hand-checked row indices, literal template strings, a
separate instance-routed forward of each definition *alone* (the selection a task-routed instance must take), a
plain LoRA model whose factors are the rows that selection names (the output a task-routed instance must
produce), a hand-written shifted cross-entropy, and hand-written definition tables.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import mixlora
from mixlora import AdapterConfig, LoRALinear, MixLoRALinear
from mixlora.constants import IGNORE_INDEX
from mixlora.data.collator import GenerationCollator, TrainingCollator
from mixlora.data.definitions import (DefinitionError, encode_definition, load_definitions,
                                      read_definitions_table)
from mixlora.model import build_tiny_llava
from tiny_llava import seeded_adapters

ROOT = Path(__file__).resolve().parents[1]
VOCAB, PAD, BOS, IMG, N = 512, 0, 1, 5, 64  # N = (64 / 8) ** 2 patches of the tiny tower
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


# ---------------------------------------------------------------------------------------------- helpers


def tiny():
    # eos_token_id=None: random weights would otherwise stop rows early and make lengths differ.
    return build_tiny_llava(vocab_size=VOCAB, image_token_id=IMG, pad_token_id=PAD, bos_token_id=BOS,
                            eos_token_id=None)


def adapted(kind="mixlora", **config):
    """The tiny stack with adapters whose B factors are random (so every factor choice changes the output)."""
    model = tiny()
    cfg = dict(kind=kind, rank=2, alpha=4.0)
    if kind == "mixlora":
        cfg.update(num_factors=6, routing_tokens="prompt", decode_routing="prefill")
    cfg.update(config)
    seeded_adapters(model, AdapterConfig(**cfg))
    return model.eval()


def image(seed: int) -> torch.Tensor:
    return torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(seed))


def sample(before, after, answer, task, definition, seed=0, labels=True):
    """A collator sample: BOS, text, N image tokens, text[, answer]; with its task's definition ids."""
    ids = [BOS, *before, *([IMG] * N), *after, *answer]
    out = {"input_ids": torch.tensor(ids), "pixel_values": image(seed), "task_name": task, "index": seed}
    if labels:
        out["labels"] = torch.tensor([IGNORE_INDEX] * (len(ids) - len(answer)) + list(answer))
    if definition is not None:
        out.update(definition_key=task, definition_ids=definition)
    return out


DEF_A = [BOS, 40, 41, 42, 43, 44, 45, 46]
DEF_B = [BOS, 60, 61, 62]
DEF_C = [BOS, 70, 71]


def selections(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k: (a.clone(), b.clone()) for k, (a, b) in mixlora.last_selections(model.llm).items()}


def alone_selection(model_instance, ids: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Selections of an instance-routed model on one text row (a definition) run by itself, unpadded."""
    row = torch.tensor([ids])
    ones = torch.ones_like(row)
    with torch.no_grad():
        model_instance(input_ids=row, attention_mask=ones, pixel_values=None, routing_mask=ones.bool())
    return selections(model_instance)


def forced_lora(model_instance, chosen: dict[str, tuple[torch.Tensor, torch.Tensor]], row: int = 0):
    """A copy whose every MixLoRA layer is a plain LoRALinear holding the pool rows ``chosen`` names (slot i of A
    with slot i of B, the same alpha / r): the output an instance routed on that selection must give."""
    model = copy.deepcopy(model_instance)
    for name, (idx_a, idx_b) in chosen.items():
        mix = model.llm.get_submodule(name)
        lora = LoRALinear(mix.base, mix.rank, mix.alpha)
        with torch.no_grad():
            lora.lora_a.copy_(mix.lora_a[idx_a[row]])
            lora.lora_b.copy_(mix.lora_b[idx_b[row]])
        parent, leaf = name.rsplit(".", 1)
        setattr(model.llm.get_submodule(parent), leaf, lora)
    assert not any(isinstance(m, MixLoRALinear) for m in model.modules())
    return model.eval()


def manual_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy of logits[b, t] against labels[b, t + 1] over every label that is not ignored."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target != IGNORE_INDEX:
                total += float(-torch.log_softmax(logits[b, t].double(), -1)[target])
                count += 1
    return total / count


# ---------------------------------------------------------------------------------------------- definitions files


def test_definitions_file_and_table_formats(tmp_path):
    good = tmp_path / "defs.json"
    good.write_text(json.dumps({"a+x": "  Answer yes or no.\n", "b": "Name the color."}))
    assert load_definitions(good) == {"a+x": "Answer yes or no.", "b": "Name the color."}
    for text, message in [('{"a": "x", "a": "y"}', "task 'a' is defined twice"),
                          ('{"a": ""}', "definition of task 'a' must be a non-empty string"),
                          ('["a"]', "expected a JSON object"), ("{}", "holds no definitions"),
                          ("{nope", "not valid JSON")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(DefinitionError, match=message):
            load_definitions(bad)
    with pytest.raises(DefinitionError, match="does not exist"):
        load_definitions(tmp_path / "absent.json")

    # Tables to convert: a JSON object, a JSON list of records, a TSV with or without header.
    listed = tmp_path / "t.json"
    listed.write_text(json.dumps([{"task_name": "VQA_counting", "definition": "Count."},
                                  {"task_name": "ITM", "definition": "Match."}]))
    assert read_definitions_table(listed) == {"VQA_counting": "Count.", "ITM": "Match."}
    tsv = tmp_path / "t.tsv"
    tsv.write_text('task_name\tdefinition\nGTSRB+image_classification\tClassify the "sign".\n\nITM\tMatch.\n')
    assert read_definitions_table(tsv) == {"GTSRB+image_classification": 'Classify the "sign".', "ITM": "Match."}
    tsv.write_text("ITM\tMatch.\tExtra\n")
    with pytest.raises(DefinitionError, match=r"t\.tsv:1: expected 2 tab-separated columns"):
        read_definitions_table(tsv)
    tsv.write_text("ITM\tMatch.\nITM\tAgain.\n")
    with pytest.raises(DefinitionError, match="task 'ITM' is defined twice"):
        read_definitions_table(tsv, fmt="tsv")


def test_definition_is_tokenised_as_a_prompt_without_image():
    from mixlora.data.tokenizer import build_tokenizer

    tok = build_tokenizer(["Name the color of the shape. What color is it? " * 20, VICUNA_SYSTEM])
    text = "Name the color of the shape."
    literal = f"{VICUNA_SYSTEM} USER: {text} ASSISTANT:"  # LLaVA's prompt string, no <image>
    assert encode_definition(text, tok, "vicuna_v1") == [tok.bos_token_id] + tok(literal,
                                                                                  add_special_tokens=False).input_ids
    with pytest.raises(DefinitionError, match="template 'plain' has no instruction turn"):
        encode_definition(text, tok, "plain")


def test_task_definition_dataset_attaches_each_task_definition_up_front():
    from mixlora.data.dataset import DataError, TaskDefinitionDataset
    from mixlora.data.definitions import DefinitionEncoder
    from mixlora.data.tokenizer import build_tokenizer

    base = [{"task_name": "a", "index": 0}, {"task_name": "b", "index": 1}, {"task_name": "a", "index": 2}]
    calls = []
    ds = TaskDefinitionDataset(base, lambda name: calls.append(name) or {"a": DEF_A, "b": DEF_B}[name],
                               ["a", "b", "a"])
    assert calls == ["a", "b"]  # once per task, before any item is read
    assert [(x["definition_key"], x["definition_ids"]) for x in ds] == [("a", DEF_A), ("b", DEF_B), ("a", DEF_A)]
    with pytest.raises(DataError, match="task 'c', which was not among the task names"):
        TaskDefinitionDataset([{"task_name": "c", "index": 0}], lambda name: DEF_A, ["a"])[0]
    tok = build_tokenizer(["Count the shapes. " * 30, VICUNA_SYSTEM])
    encoder = DefinitionEncoder({"a": "Count the shapes. " * 40}, tok, "vicuna_v1", max_length=64)
    with pytest.raises(DefinitionError, match=r"the definition of 'a' is \d+ tokens as a prompt, more than "
                                              r"max_length=64"):
        encoder("a")
    with pytest.raises(DefinitionError, match="no task definition for 'b'"):
        encoder("b")


# ---------------------------------------------------------------------------------------------- collators


def test_training_collator_appends_one_definition_row_per_task():
    samples = [sample([9], [10], [11, 12], "a", DEF_A, 0), sample([20, 21], [22], [23], "b", DEF_B, 1),
               sample([30], [31], [32], "a", DEF_A, 2), sample([33], [], [34, 35, 36], "c", DEF_C, 3),
               sample([37], [38], [39], "b", DEF_B, 4)]
    batch = TrainingCollator(PAD)(samples)
    # 5 instances, then definitions of a, b, c in order of first appearance (rows 5, 6, 7).
    assert batch["source_rows"].tolist() == [5, 6, 5, 7, 6, 5, 6, 7]
    assert batch["definition_keys"] == ["a", "b", "c"]
    width = max(len(s["input_ids"]) for s in samples)  # 1 + 1 + 64 + 1 + 2 = 69 (the first sample)
    assert batch["input_ids"].shape == (8, width) and width == 69
    for row, ids in ((5, DEF_A), (6, DEF_B), (7, DEF_C)):
        n = len(ids)
        assert batch["input_ids"][row].tolist() == ids + [PAD] * (width - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["routing_mask"][row].tolist() == [True] * n + [False] * (width - n)
        assert (batch["labels"][row] == IGNORE_INDEX).all()
    # instance rows are exactly what the collator gives without definitions
    plain = TrainingCollator(PAD)([{k: v for k, v in s.items() if not k.startswith("definition")} for s in samples])
    for key in ("input_ids", "attention_mask", "labels", "routing_mask"):
        assert torch.equal(batch[key][:5], plain[key])
    assert "source_rows" not in plain and batch["pixel_values"].shape == (5, 3, 64, 64)
    assert batch["task_name"] == ["a", "b", "a", "c", "b"] and len(batch["index"]) == 5
    # pad_to_multiple_of counts the definition rows too
    assert TrainingCollator(PAD, pad_to_multiple_of=32)(samples)["input_ids"].shape == (8, 96)


def test_generation_collator_left_pads_definition_rows():
    samples = [sample([9], [10], [], "b", DEF_B, 0, labels=False), sample([20, 21], [22], [], "a", DEF_A, 1,
                                                                             labels=False)]
    batch = GenerationCollator(PAD)(samples)
    assert batch["source_rows"].tolist() == [2, 3, 2, 3] and batch["definition_keys"] == ["b", "a"]
    width = 1 + 2 + N + 1  # the second prompt
    assert batch["input_ids"][2].tolist() == [PAD] * (width - 4) + DEF_B
    assert batch["input_ids"][3].tolist() == [PAD] * (width - 8) + DEF_A
    assert batch["routing_mask"][3].tolist() == [False] * (width - 8) + [True] * 8
    assert batch["pixel_values"].shape[0] == 2 and batch["task_name"] == ["b", "a"]
    assert "definition_ids" not in batch and "definition_key" not in batch


def test_collator_refuses_inconsistent_definitions():
    collate = TrainingCollator(PAD)
    with pytest.raises(ValueError, match=r"samples \[1\] carry no task definition while others do"):
        collate([sample([9], [], [11], "a", DEF_A), sample([9], [], [11], "b", None)])
    with pytest.raises(ValueError, match="samples of task 'a' carry different definition ids"):
        collate([sample([9], [], [11], "a", DEF_A), sample([9], [], [11], "a", DEF_B)])
    half = sample([9], [], [11], "a", DEF_A)
    del half["definition_ids"]
    with pytest.raises(KeyError, match="carry only one of"):
        collate([half])


# ---------------------------------------------------------------------------------------------- model


def test_task_routed_forward_equals_routing_on_each_definition_alone():
    model = adapted(routing_source="task")
    reference = adapted(routing_source="instance")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    samples = [sample([9], [10], [11, 12], "a", DEF_A, 0), sample([20, 21], [22], [23], "b", DEF_B, 1),
               sample([30], [31], [32], "a", DEF_A, 2)]
    batch = TrainingCollator(PAD)(samples)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                       routing_mask=batch["routing_mask"], source_rows=batch["source_rows"]).logits
    chosen = selections(model)
    alone = {"a": alone_selection(reference, DEF_A), "b": alone_selection(reference, DEF_B)}
    assert len(chosen) == 14  # 7 targets x 2 layers
    for row, task in enumerate(["a", "b", "a", "a", "b"]):  # instances, then the definition rows themselves
        for name, (idx_a, idx_b) in chosen.items():
            assert torch.equal(idx_a[row], alone[task][name][0][0]), (row, name)
            assert torch.equal(idx_b[row], alone[task][name][1][0]), (row, name)
    # different definitions route differently somewhere (otherwise the test above could not tell them apart)
    assert any(not torch.equal(alone["a"][n][0], alone["b"][n][0]) for n in chosen)

    # Each instance's output is the plain LoRA of its definition's factors, run on the instance alone.
    for row, task in enumerate(["a", "b", "a"]):
        ids = samples[row]["input_ids"][None]
        with torch.no_grad():
            expected = forced_lora(reference, alone[task])(ids, torch.ones_like(ids),
                                                           samples[row]["pixel_values"][None])
        n = ids.shape[1]
        torch.testing.assert_close(logits[row, :n], expected.logits[0], atol=2e-5, rtol=1e-4)

    # An instance's own prompt and image do not move its selection: only its task's definition does.
    changed = [sample([99, 98, 97], [96], [11], "a", DEF_A, 7), sample([20], [], [23], "b", DEF_B, 8),
               sample([30], [31], [32], "b", DEF_B, 9)]
    batch = TrainingCollator(PAD)(changed)
    with torch.no_grad():
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], routing_mask=batch["routing_mask"],
              source_rows=batch["source_rows"])
    for name, (idx_a, _) in selections(model).items():
        assert torch.equal(idx_a[0], alone["a"][name][0][0]) and torch.equal(idx_a[2], alone["b"][name][0][0])


def test_definition_rows_leave_the_loss_unchanged():
    """LoRA ignores routing, so the logits of instance rows are the same with or without definition rows; the
    loss must be too: definition rows add no term and no token to the mean."""
    model = adapted(kind="lora")
    samples = [sample([9], [10], [11, 12, 13], "a", DEF_A, 0), sample([20, 21], [22], [23], "b", DEF_B, 1)]
    with_rows = TrainingCollator(PAD)(samples)
    without = TrainingCollator(PAD)([{k: v for k, v in s.items() if not k.startswith("definition")}
                                     for s in samples])
    with torch.no_grad():
        out = model(with_rows["input_ids"], with_rows["attention_mask"], with_rows["pixel_values"],
                    labels=with_rows["labels"], routing_mask=with_rows["routing_mask"],
                    source_rows=with_rows["source_rows"])
        ref = model(without["input_ids"], without["attention_mask"], without["pixel_values"], labels=without["labels"])
        ref_logits = model(without["input_ids"], without["attention_mask"], without["pixel_values"]).logits
    expected = manual_loss(ref_logits, without["labels"])  # 4 supervised tokens, by hand
    assert float(ref.loss) == pytest.approx(expected, rel=1e-5)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    # and the same holds for a task-routed MixLoRA model: the loss is that of its own instance logits
    task = adapted(routing_source="task")
    with torch.no_grad():
        out = task(with_rows["input_ids"], with_rows["attention_mask"], with_rows["pixel_values"],
                   labels=with_rows["labels"], routing_mask=with_rows["routing_mask"],
                   source_rows=with_rows["source_rows"])
        logits = task(with_rows["input_ids"], with_rows["attention_mask"], with_rows["pixel_values"],
                      routing_mask=with_rows["routing_mask"], source_rows=with_rows["source_rows"]).logits
    assert float(out.loss) == pytest.approx(manual_loss(logits[:2], with_rows["labels"][:2]), rel=1e-5)


def test_task_routed_generate_decodes_the_instances_on_their_definitions():
    model = adapted(routing_source="task")
    reference = adapted(routing_source="instance")
    samples = [sample([9, 8, 7], [10], [], "a", DEF_A, 0, labels=False),
               sample([20], [22, 23], [], "b", DEF_B, 1, labels=False)]
    batch = GenerationCollator(PAD)(samples)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    new = model.generate(*args, routing_mask=batch["routing_mask"], source_rows=batch["source_rows"],
                         max_new_tokens=5, do_sample=False)
    assert new.shape == (2, 5)  # instance rows only
    firsts = []
    for row, (task, ids) in enumerate((("a", DEF_A), ("b", DEF_B))):
        lora = forced_lora(reference, alone_selection(reference, ids))
        one = samples[row]["input_ids"][None]
        expected = lora.generate(one, torch.ones_like(one), samples[row]["pixel_values"][None], max_new_tokens=5,
                                 do_sample=False)
        assert torch.equal(new[row], expected[0]), (row, new[row], expected[0])
        firsts.append(int(expected[0, 0]))
    # Definition rows are finished at once: when every instance ends (here: at its first token), generation ends.
    stopped = model.generate(*args, routing_mask=batch["routing_mask"], source_rows=batch["source_rows"],
                             max_new_tokens=5, do_sample=False, eos_token_id=firsts, pad_token_id=PAD)
    assert stopped.shape == (2, 1) and stopped[:, 0].tolist() == firsts

    with pytest.raises(ValueError, match="no source_rows were given"):
        model.generate(*args, routing_mask=batch["routing_mask"], max_new_tokens=2)
    with pytest.raises(ValueError, match="pixel_values holds 3 images"):
        model.generate(batch["input_ids"], batch["attention_mask"], torch.stack([image(0)] * 3),
                       routing_mask=batch["routing_mask"], source_rows=batch["source_rows"], max_new_tokens=2)
    with pytest.raises(ValueError, match="is not a task-routed batch"):
        model.generate(*args, routing_mask=batch["routing_mask"], source_rows=torch.tensor([0, 1, 2, 3]),
                       max_new_tokens=2)
    per_step = adapted(routing_source="task", decode_routing="per_step")
    with pytest.raises(ValueError, match="decode_routing='per_step', which would re-route"):
        per_step.generate(*args, routing_mask=batch["routing_mask"], source_rows=batch["source_rows"],
                          max_new_tokens=2)


def test_definition_rows_must_be_text_only():
    model = tiny()
    ids = torch.tensor([[BOS, *([IMG] * N), 7], [BOS, 40, IMG, 0] + [0] * (N - 2)])
    mask = torch.ones_like(ids)
    with pytest.raises(ValueError, match=r"pixel_values has 1 images but input_ids has 2 rows, and rows \[1\]"):
        model(ids, mask, image(0)[None])


# ---------------------------------------------------------------------------------------------- train.py, eval.py


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=1, stage1_size=8, progress=False)
    return out


def train_overrides(suite: Path, out: Path, *extra: str) -> list[str]:
    return [f"output_dir={out}", f"data.annotations={suite / 'train.json'}", f"data.image_folder={suite / 'images'}",
            "data.generate=null", "logger=disabled", "trainer.progress_bar=false", "trainer.micro_batch_size=4",
            "trainer.global_batch_size=8", "trainer.schedule_steps=20", "trainer.save_every=0", *extra]


TASK = ("adapter.routing_source=task", "adapter.num_factors=8")


def compose_eval(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="eval", overrides=overrides)


def eval_script():
    spec = importlib.util.spec_from_file_location("mixlora_eval_script", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_py_with_task_routing_saves_and_evaluates(suite, tmp_path):
    from mixlora.tasks.common import TaskError
    from mixlora.train import compose_config, run

    out = tmp_path / "run"
    summary = run(compose_config(train_overrides(suite, out, *TASK, "trainer.max_steps=2",
                                                 f"data.task_definitions={suite / 'task_definitions.json'}")))
    assert summary["steps"] == 2 and math.isfinite(summary["loss_last"]) and math.isfinite(summary["check_loss"])
    saved = json.loads((out / "adapter_config.json").read_text())
    assert (saved["routing_source"], saved["decode_routing"]) == ("task", "prefill")

    script = eval_script()
    common = [f"run={out}", f"data_root={suite}", "tasks=[pope,mme]", "limit=1", "decoding.max_new_tokens=2",
              "progress=false"]
    result = script.run_eval(compose_eval(common))  # definitions: the run's data.task_definitions
    assert list(result["tasks"]) == ["pope", "mme"]
    pope = [json.loads(x) for x in (out / "eval/pope/predictions.jsonl").read_text().splitlines()]
    assert len(pope) == 3 and all(isinstance(r["prediction"], str) for r in pope)
    settings = json.loads((out / "eval/mme/settings.json").read_text())
    table = json.loads((suite / "task_definitions.json").read_text())
    assert settings["task_definitions"] == {k: table[k] for k in table if k.startswith("mme/")}
    assert list(json.loads((out / "eval/pope/settings.json").read_text())["task_definitions"]) == ["pope"]

    # A definitions file without the sets' keys fails before the model is loaded, naming the keys to add.
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({k: v for k, v in table.items() if k != "pope"}))
    with pytest.raises(TaskError, match=r"has none for pope: 'pope/random' or 'pope' or 'random', "
                                        r"'pope/popular' or 'pope' or 'popular'"):
        script.run_eval(compose_eval(common + [f"task_definitions={partial}", "overwrite=true"]))
    # Definitions for a run that does not route on them are refused.
    with pytest.raises(TaskError, match="does not route on task definitions"):
        script.run_eval(compose_eval(["run=null", f"data_root={suite}", "tasks=[pope]",
                                      f"task_definitions={partial}"]))


def test_preflight_checks_task_routing_and_definitions(suite, tmp_path):
    from mixlora.train import ConfigError, compose_config
    from mixlora.train.validate import preflight

    defs = suite / "task_definitions.json"

    def check(*extra):
        return preflight(compose_config(train_overrides(suite, tmp_path / "run", *extra)))

    assert check(*TASK, f"data.task_definitions={defs}").data.task_definitions == str(defs)
    with pytest.raises(ConfigError, match=r"routing_source=task routes every instance.*data\.task_definitions"):
        check(*TASK)
    with pytest.raises(ConfigError, match="data.task_definitions is set but adapter.routing_source=instance"):
        check(f"data.task_definitions={defs}")
    with pytest.raises(ConfigError, match="data.task_definitions is set but adapter kind=lora"):
        check("adapter=lora", f"data.task_definitions={defs}")
    with pytest.raises(ConfigError, match="routing_source=task needs adapter.decode_routing=prefill"):
        check(*TASK, "adapter.decode_routing=per_step", f"data.task_definitions={defs}")
    with pytest.raises(ConfigError, match=r"file '/nonexistent\.json' does not exist.*--only-definitions"):
        check(*TASK, "data.task_definitions=/nonexistent.json")
    table = json.loads(defs.read_text())
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({k: v for k, v in table.items()
                                   if k not in ("SynthCount+count_words", "SynthGlyphs+arithmetic")}))
    with pytest.raises(ConfigError, match=r"no definition for 2 task\(s\) of .*train\.json: "
                                          r"'SynthCount\+count_words', 'SynthGlyphs\+arithmetic'\. Task routing"):
        check(*TASK, f"data.task_definitions={partial}")


def test_every_held_out_example_of_the_suite_finds_its_definition(suite):
    from mixlora.tasks.evaluate import check_task_definitions, load_examples

    script = eval_script()
    cfg = compose_eval(["run=null", f"data_root={suite}",
                        "tasks=[mme,cvbench,pope,textvqa,vsr,snli_ve,cifar10,cifar100,mnist]"])
    tasks = script.build_tasks(cfg)
    examples = load_examples(tasks, None, cfg.decoding)
    table = load_definitions(suite / "task_definitions.json")
    check_task_definitions(tasks, examples, table)  # raises on a missing key
    from mixlora.tasks.common import find_definition

    used = {find_definition(name, ex, table) for name in tasks for ex in examples[name]}
    train = {r["task_name"] for r in json.loads((suite / "train.json").read_text())}
    assert used | train == set(table)  # every entry of the file is used by training or by an eval set


def test_prepare_vision_flan_converts_the_definitions_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_vf", ROOT / "data/prepare_vision_flan.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fixtures = ROOT / "tests/fixtures/data/vision_flan"
    table = tmp_path / "defs.tsv"
    table.write_text("task_name\tdefinition\nGTSRB+image_classification\tClassify the traffic sign.\n"
                     "VQA_counting\tCount the objects.\nunused+task\tNot in the data.\n")
    args = ["--annotations", str(fixtures / "annotation_191-task_1k.json"), "--images",
            str(fixtures / "images_191task_1k"), "--out", str(tmp_path / "out"), "--definitions", str(table)]
    assert script.main(args) == 0
    written = json.loads((tmp_path / "out/task_definitions.json").read_text())
    assert written == {"GTSRB+image_classification": "Classify the traffic sign.",
                       "VQA_counting": "Count the objects.", "unused+task": "Not in the data."}
    report = json.loads((tmp_path / "out/report.json").read_text())
    # the fixture's clean tasks: GTSRB+image_classification, VQA_counting, coco+image_classification_appliance
    assert report["definitions"]["tasks_without_definition"] == ["coco+image_classification_appliance"]
    assert "1 clean task(s) have none: coco+image_classification_appliance" in capsys.readouterr().out
    table.write_text("GTSRB+image_classification\tonly\tthree columns\n")
    with pytest.raises(SystemExit) as exit_info:
        script.main(args)
    assert exit_info.value.code == 2
