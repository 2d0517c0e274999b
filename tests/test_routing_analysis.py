"""Routing analysis selections: padding-free at any batch size, and task routing on each task's definition.

References are independent of ``collect_selections``: the same prompt routed alone (no padding at all), the
prefill selection of ``model.generate`` on the same batch, and, for task routing, an instance-routed copy of the
model (same weights) run on the literal definition prompt by itself.
"""

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from mixlora import AdapterConfig, MixLoRALinear, last_selections
from mixlora.analysis import fresh_stack, load_manifest
from mixlora.analysis.routing import analyse_routing, collect_selections
from mixlora.data.collator import GenerationCollator
from mixlora.data.dataset import PromptDataset

ROOT = Path(__file__).resolve().parents[1]
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
# llava_v1's system prompt (the analysis renders prompts and definitions with the evaluation template).
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("suite")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=2, stage1_size=0, progress=False)
    return out


def seeded_stack(suite, config: AdapterConfig):
    with torch.random.fork_rng(devices=[]):  # the same routers whatever ran before
        torch.manual_seed(0)
        return fresh_stack("tiny", config, [suite / "train.json"])


@pytest.fixture(scope="module")
def mixed_prompts(suite, tmp_path_factory):
    """Prompts of very different lengths (one ~100 tokens longer), so a batch holds a lot of left padding."""
    src = json.loads((suite / "eval/vsr/test.jsonl").read_text().splitlines()[0])
    image = str(suite / "eval/vsr" / src["image_path"])
    texts = ["Red?", "Is the circle to the left of the square? " * 12, "What colour is the shape?",
             "Count the dots. " * 4]
    path = tmp_path_factory.mktemp("prompts") / "mixed.jsonl"
    path.write_text("".join(json.dumps({"unique_id": str(k), "prompt": t, "image_path": image}) + "\n"
                            for k, t in enumerate(texts)))
    return path


VARIANTS = {
    "corrected-prompt": AdapterConfig(rank=2, num_factors=4),
    "corrected-all": AdapterConfig(rank=2, num_factors=4, routing_tokens="all"),
    "released-all": AdapterConfig.released(4, 2),
    "released-prompt": AdapterConfig.released(4, 2, routing_tokens="prompt"),
}


def _stacked(selections: dict) -> dict:
    return {m: torch.cat([a, b], dim=1) for m, (a, b) in selections.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_prompt_selects_the_same_factors_alone_and_in_a_padded_batch(suite, mixed_prompts, variant):
    stack = seeded_stack(suite, VARIANTS[variant])
    model = stack.model
    ds = PromptDataset(str(mixed_prompts), stack.tokenizer, stack.image_processor, model.num_image_tokens)
    items = [ds[k] for k in range(len(ds))]
    lengths = [len(it["input_ids"]) for it in items]
    assert max(lengths) - min(lengths) > 100  # the short rows are mostly padding
    collate = GenerationCollator(stack.tokenizer.pad_token_id)
    batch = collate(items)
    together = collect_selections(model, [batch], progress=False)
    alone = collect_selections(model, [collate([it]) for it in items], progress=False)
    assert len(together.idx_a) == 14 and together.tasks == ["mixed"] * 4
    for module in together.idx_a:
        assert torch.equal(together.idx_a[module], alone.idx_a[module]), module
        assert torch.equal(together.idx_b[module], alone.idx_b[module]), module

    # generate's prefill on the same padded batch (one new token: the prefill is the only forward) chooses the same.
    model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"], routing_mask=batch["routing_mask"], max_new_tokens=1,
                   do_sample=False, pad_token_id=stack.tokenizer.pad_token_id)
    prefill = _stacked(last_selections(model.llm))
    for module, chosen in prefill.items():
        assert torch.equal(chosen, torch.cat([together.idx_a[module], together.idx_b[module]], dim=1)), module

    if VARIANTS[variant].routing_tokens == "all":
        # What the batch gives when the mean covers the padding too (the training-time mean): some rows change,
        # so the equalities above are not a property of this model whatever the pooling.
        with torch.no_grad(), model.routing(batch["routing_mask"]):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  pixel_values=batch["pixel_values"])
        padded = _stacked(last_selections(model.llm))
        changed = sum(int((padded[m] != torch.cat([alone.idx_a[m], alone.idx_b[m]], 1)).any(dim=1).sum())
                      for m in padded)
        assert changed > 0


# ---------------------------------------------------------------------------------------------- task routing
def _definition_selection(stack, text: str) -> dict:
    """Selections of an instance-routed copy of ``stack.model`` on the literal definition prompt alone."""
    reference = copy.deepcopy(stack.model)
    for m in reference.modules():
        if isinstance(m, MixLoRALinear):
            m.routing_source = "instance"
    tok = stack.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok(f"{LLAVA_SYSTEM} USER: {text} ASSISTANT:",
                                                 add_special_tokens=False)["input_ids"]])
    ones = torch.ones_like(ids)
    with torch.no_grad(), reference.routing(ones.bool()):
        reference(input_ids=ids, attention_mask=ones, pixel_values=None)
    return _stacked(last_selections(reference.llm))


def _prompts(suite, names):
    from mixlora.analysis import heldout_prompts

    out, closest = {}, {}
    for name in names:
        rows, closest[name] = heldout_prompts(suite, name)
        out[name] = rows[:3]
    return out, closest


def test_task_routed_selections_are_those_of_each_definition_alone(suite):
    stack = seeded_stack(suite, AdapterConfig(rank=2, num_factors=4, routing_source="task"))
    definitions = json.loads((suite / "task_definitions.json").read_text())
    heldout = ["cifar10", "mme/count", "pope/adversarial"]
    prompts, closest = _prompts(suite, heldout)
    train = "SynthShapes+color_name"
    records = [r for r in json.loads((suite / "train.json").read_text()) if r["task_name"] == train][:3]
    prompts[train] = [{"unique_id": str(k), "prompt": r["conversations"][0]["value"],
                       "image_path": str(suite / "images" / r["image"])} for k, r in enumerate(records)]
    report = analyse_routing(stack, prompts, heldout, closest, [0, 1], batch_size=4, tsne=False, progress=False,
                             definitions=definitions)
    # mme/count routes on "mme/count" and pope/adversarial on "pope", the keys eval.py would use.
    used = {t: v["key"] for t, v in report.info["task_definitions"].items()}
    assert used == {"cifar10": "cifar10", "mme/count": "mme/count", "pope/adversarial": "pope", train: train}
    sel = report.selections
    expected = {t: _definition_selection(stack, definitions[key]) for t, key in used.items()}
    for k, task in enumerate(sel.tasks):
        for module in sel.idx_a:
            got = torch.cat([sel.idx_a[module][k], sel.idx_b[module][k]])
            assert torch.equal(got, expected[task][module][0]), (task, module)
    assert any(not torch.equal(expected["cifar10"][m], expected["mme/count"][m]) for m in sel.idx_a)

    with pytest.raises(ValueError, match=r"none for mme/count: 'mme/count' or 'mme' or 'count'.*--task-definitions"):
        analyse_routing(stack, prompts, heldout, closest, [0], tsne=False, progress=False,
                        definitions={k: v for k, v in definitions.items() if k != "mme/count"})
    with pytest.raises(ValueError, match="pass definitions="):
        analyse_routing(stack, prompts, heldout, closest, [0], tsne=False, progress=False)
    plain = seeded_stack(suite, AdapterConfig(rank=2, num_factors=4))
    with pytest.raises(ValueError, match="does not route on them"):
        analyse_routing(plain, prompts, heldout, closest, [0], tsne=False, progress=False, definitions=definitions)


def _script():
    spec = importlib.util.spec_from_file_location("routing_analysis", ROOT / "scripts/routing_analysis.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_routing_script_with_task_routing(suite, tmp_path, capsys):
    """Every instance of a task routes on one definition, so its r factors are always the same: usage entropy is
    ln r exactly (ln 2 here) for every task and module; a run picks its definitions up from its config, and the
    factors it counts are those each definition selects by itself."""
    from omegaconf import OmegaConf

    from mixlora.build import save_run

    script = _script()
    common = ["--data", str(suite / "train.json"), "--heldout", "cifar10,mme/count", "--n", "2", "--no-tsne",
              "--no-progress", "--layers", "0"]
    fresh = ["--model", "tiny", "--num-factors", "4", "--rank", "2"]
    result = script.main(fresh + ["--routing-source", "task", "--out", str(tmp_path / "fresh")] + common)
    usage = result["usage"]
    manifest = load_manifest(suite)
    assert "mme/count" in usage["tasks"] and usage["instances"]["cifar10"] == 2
    for entry in usage["modules"].values():
        for part in ("A", "B"):
            for task in usage["tasks"]:
                counts = entry[part]["counts"][task]
                assert sorted(counts) == [0, 0, 2, 2]
                assert entry[part]["entropy"][task] == pytest.approx(math.log(2))
    assert usage["info"]["task_definitions"]["mme/count"]["key"] == "mme/count"
    assert manifest["eval"]["cifar10"]["closest_training_tasks"][0] in usage["tasks"]

    bad = tmp_path / "defs.json"
    bad.write_text(json.dumps({k: v for k, v in json.loads((suite / "task_definitions.json").read_text()).items()
                               if k != "cifar10"}))
    with pytest.raises(ValueError, match="none for cifar10: 'cifar10'"):
        script.main(fresh + ["--routing-source", "task", "--task-definitions", str(bad), "--out",
                             str(tmp_path / "bad")] + common)
    with pytest.raises(ValueError, match="add --routing-source task or drop --task-definitions"):
        script.main(fresh + ["--task-definitions", str(bad), "--out", str(tmp_path / "bad")] + common)

    # A saved task-routed run: its config's data.task_definitions is used, as eval.py uses it.
    stack = seeded_stack(suite, AdapterConfig(rank=2, num_factors=4, routing_source="task"))
    config = OmegaConf.create({"model": OmegaConf.load(ROOT / "configs/model/tiny.yaml"),
                               "data": {"task_definitions": str(suite / "task_definitions.json")}})
    run = save_run(tmp_path / "run", stack, config)
    saved = script.main(["--run", str(run), "--out", str(tmp_path / "run_out")] + common)["usage"]
    used = {t: v["key"] for t, v in saved["info"]["task_definitions"].items()}
    assert used["cifar10"] == "cifar10" and used["mme/count"] == "mme/count"
    definitions = json.loads((suite / "task_definitions.json").read_text())
    for task, key in used.items():  # the factors counted are those the definition selects alone
        alone = _definition_selection(stack, definitions[key])
        for module, entry in saved["modules"].items():
            for part, chosen in (("A", alone[module][0, :2]), ("B", alone[module][0, 2:])):
                expected = [saved["instances"][task] if e in chosen.tolist() else 0 for e in range(4)]
                assert entry[part]["counts"][task] == expected, (task, module, part)
    capsys.readouterr()
