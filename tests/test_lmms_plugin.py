"""The lmms-eval plugin (mixlora.lmms_plugin): its model class's generate_until and loglikelihood, routing on
the definition of each lmms-eval task, and lmms-eval's own registry and evaluator driving it.

References are independent of the code under test: our generation loop and scorer on the same model, a hand-built
forward pass on the literal prompt text, hand-computed values for the pure helpers, and, for task routing, a plain
LoRA holding the factors that a definition's prompt selects by itself. The shared setup is in eval_setup.py.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from eval_setup import ROOT, SHORT, VICUNA_SYSTEM, _env, stack, suite, tiny_mixlora_stack  # noqa: F401  (stack, suite: fixtures)
from mixlora import AdapterConfig, MixLoRALinear
from mixlora.build import build_stack, build_tokenizer_from_config, load_run, save_run
from mixlora.data.synthetic import generate_suite
from mixlora.tasks.evaluate import Decoding, generate_answers
from mixlora.tasks import pope
from mixlora.tasks.common import Example, TaskError


# ---------------------------------------------------------------- lmms-eval plugin


class Request:
    """lmms-eval's Instance as the model sees it: ``args`` only (docs/benchmarks.md#lmms-eval)."""

    def __init__(self, *args):
        self.args = args


def test_lmms_plugin_generate_until_and_loglikelihood(stack, suite, tmp_path):
    from mixlora.lmms_plugin.models import AVAILABLE_MODELS
    from mixlora.lmms_plugin.models.mixlora import MixLoRA, continuation_logprob, cut_at_stop

    assert AVAILABLE_MODELS == {"mixlora": "MixLoRA"}
    model_cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    run = save_run(tmp_path / "run", stack, OmegaConf.create({"model": model_cfg}))
    lm = MixLoRA(run=str(run), batch_size=2)
    docs = [{"image": Image.open(suite / "eval/mme/color" / name), "q": "Is it red?"}
            for name in ("synth_0000.png", "synth_0001.png")]
    lm.task_dict = {"toy": {"test": docs}}
    visual = lambda doc: [doc["image"]]  # noqa: E731 (lmms-eval passes a function of the document)
    greedy = {"max_new_tokens": 3, "temperature": 0, "until": ["\n\n"]}
    requests = [Request("Is it red?", greedy, visual, 0, "toy", "test"),
                Request("Is it blue?", dict(greedy, max_new_tokens=2), visual, 1, "toy", "test"),
                Request("Is it green?", greedy, visual, 1, "toy", "test")]
    out = lm.generate_until(requests)
    reference = Decoding(max_new_tokens=3)
    examples = [Example("a", "Is it red?", docs[0]["image"]), Example("b", "Is it green?", docs[1]["image"])]
    ref = [t for b in generate_answers(lm.stack, examples, reference, 3, batch_size=1) for _, t in b]
    assert [out[0], out[2]] == ref  # grouped by gen_kwargs, returned in request order
    short = [t for b in generate_answers(lm.stack, [Example("c", "Is it blue?", docs[1]["image"])], reference, 2)
             for _, t in b]
    assert out[1] == short[0]
    with pytest.raises(ValueError, match="num_beams > 1 is not supported"):
        lm.generate_until([Request("Q", {"num_beams": 3}, visual, 0, "toy", "test")])
    with pytest.raises(ValueError, match="2 images"):
        lm.generate_until([Request("Q", greedy, lambda d: [d["image"], d["image"]], 0, "toy", "test")])
    with pytest.raises(ValueError, match="unknown model_args"):
        MixLoRA(run=str(run), conv_template="v1")

    # loglikelihood against a hand-built forward pass: literal prompt text, continuation tokens appended.
    (logp, greedy_flag), = lm.loglikelihood([Request("Is it red?", " yes", visual, 0, "toy", "test")])
    tok, model = lm.stack.tokenizer, lm.stack.model
    image_id = tok.convert_tokens_to_ids("<image>")
    ids = [tok.bos_token_id] + tok(f"{VICUNA_SYSTEM} USER: <image>\nIs it red? ASSISTANT:",
                                   add_special_tokens=False)["input_ids"]
    cont = tok(" yes", add_special_tokens=False)["input_ids"]
    k = ids.index(image_id)
    full = ids[:k] + [image_id] * model.num_image_tokens + ids[k + 1:]
    seq = torch.tensor([full + cont])
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq),
                       pixel_values=lm.stack.image_processor(docs[0]["image"]).unsqueeze(0)).logits[0]
    expected = sum(torch.log_softmax(logits[len(full) - 1 + j], -1)[t].item() for j, t in enumerate(cont))
    assert logp == pytest.approx(expected, abs=1e-4)
    assert greedy_flag == all(int(logits[len(full) - 1 + j].argmax()) == t for j, t in enumerate(cont))

    # The pure helpers on hand-computed values.
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert continuation_logprob(logits, 2, [0]) == (pytest.approx(math.log(2 / 4)), True)
    assert continuation_logprob(logits, 2, [1, 2]) == (pytest.approx(math.log(1 / 4) + 5 - math.log(2 + math.exp(5))),
                                                       False)
    assert cut_at_stop(" Yes.\n\nUSER: more", ["\n\n", "USER:"]) == "Yes."
    assert cut_at_stop("No", []) == "No"


def _forced_lora(model, chosen: dict):
    """A copy of ``model`` whose every MixLoRA layer is a plain LoRALinear holding the pool rows ``chosen``
    ({module: (idx_a [1, r], idx_b [1, r])}) names: what an instance routed on that selection must compute."""
    from mixlora.layers import LoRALinear

    model = copy.deepcopy(model)
    for name, (idx_a, idx_b) in chosen.items():
        mix = model.llm.get_submodule(name)
        lora = LoRALinear(mix.base, mix.rank, mix.alpha)
        with torch.no_grad():
            lora.lora_a.copy_(mix.lora_a[idx_a[0]])
            lora.lora_b.copy_(mix.lora_b[idx_b[0]])
        parent, leaf = name.rsplit(".", 1)
        setattr(model.llm.get_submodule(parent), leaf, lora)
    assert not any(isinstance(m, MixLoRALinear) for m in model.modules())
    return model.eval()


def test_lmms_plugin_routes_each_task_on_its_definition(suite, tmp_path):
    """A task-routed run through the plugin: each request routes on the definition of its lmms-eval task, i.e.
    answers as a plain LoRA holding the factors that definition's prompt selects by itself (an instance-routed
    copy of the same weights, run on the literal definition string)."""
    from mixlora import last_selections
    from mixlora.lmms_plugin.models.mixlora import MixLoRA

    # random B: every factor choice changes the answers
    cfg, stack = tiny_mixlora_stack(suite, AdapterConfig(num_factors=4, rank=2, routing_source="task"))
    tok = stack.tokenizer
    definitions = {"toy_a": "Name the colour of the shape in the image.",
                   "toy_b": "Count the objects in the picture and answer with a number."}
    path = tmp_path / "task_definitions.json"
    path.write_text(json.dumps(definitions))
    run = save_run(tmp_path / "run", stack, OmegaConf.create({"model": cfg, "data": {"task_definitions": str(path)}}))
    lm = MixLoRA(run=str(run), batch_size=2)  # the definitions come from the run's config, as in eval.py
    model = lm.stack.model
    docs = [{"image": Image.open(suite / "eval/mme/color" / name)} for name in ("synth_0000.png", "synth_0001.png")]
    lm.task_dict = {"toy_a": {"test": docs}, "toy_b": {"test": docs}}
    visual = lambda doc: [doc["image"]]  # noqa: E731

    instance = copy.deepcopy(model)
    for m in instance.modules():
        if isinstance(m, MixLoRALinear):
            m.routing_source = "instance"
    forced = {}
    for task, text in definitions.items():
        row = torch.tensor([[tok.bos_token_id] + tok(f"{VICUNA_SYSTEM} USER: {text} ASSISTANT:",
                                                     add_special_tokens=False)["input_ids"]])
        with torch.no_grad(), instance.routing(torch.ones_like(row).bool()):
            instance(input_ids=row, attention_mask=torch.ones_like(row), pixel_values=None)
        chosen = {k: (a.clone(), b.clone()) for k, (a, b) in last_selections(instance.llm).items()}
        forced[task] = (chosen, _forced_lora(model, chosen))
    assert any(not torch.equal(forced["toy_a"][0][k][0], forced["toy_b"][0][k][0]) for k in forced["toy_a"][0])

    image_id = tok.convert_tokens_to_ids("<image>")

    def prompt_ids(question: str) -> list[int]:
        ids = [tok.bos_token_id] + tok(f"{VICUNA_SYSTEM} USER: <image>\n{question} ASSISTANT:",
                                       add_special_tokens=False)["input_ids"]
        k = ids.index(image_id)
        return ids[:k] + [image_id] * model.num_image_tokens + ids[k + 1:]

    greedy = {"max_new_tokens": 4, "temperature": 0}
    asked = [("Is it red?", 0, "toy_a"), ("How many?", 1, "toy_b"), ("Is it green?", 1, "toy_a")]
    out = lm.generate_until([Request(q, greedy, visual, d, t, "test") for q, d, t in asked])
    for (question, doc, task), said in zip(asked, out):
        ids = torch.tensor([prompt_ids(question)])
        pixels = lm.stack.image_processor(docs[doc]["image"]).unsqueeze(0)
        new = forced[task][1].generate(ids, torch.ones_like(ids), pixels, max_new_tokens=4, do_sample=False,
                                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert said == tok.decode(new[0], skip_special_tokens=True).strip(), (question, task)

    # loglikelihood: the request row is left-padded when the definition row is longer; same numbers either way.
    scored = lm.loglikelihood([Request("Is it red?", " yes", visual, 0, "toy_a", "test"),
                               Request("Is it red?", " yes", visual, 0, "toy_b", "test")])
    cont = tok(" yes", add_special_tokens=False)["input_ids"]
    full = prompt_ids("Is it red?")
    seq = torch.tensor([full + cont])
    for (logp, _), task in zip(scored, ("toy_a", "toy_b")):
        with torch.no_grad():
            logits = forced[task][1](input_ids=seq, attention_mask=torch.ones_like(seq),
                                     pixel_values=lm.stack.image_processor(docs[0]["image"]).unsqueeze(0)).logits[0]
        expected = sum(torch.log_softmax(logits[len(full) - 1 + j], -1)[t].item() for j, t in enumerate(cont))
        assert logp == pytest.approx(expected, abs=1e-4), task
    assert scored[0][0] != pytest.approx(scored[1][0], abs=1e-4)  # the two definitions really route differently

    with pytest.raises(TaskError, match=r"no definition for lmms-eval task\(s\) \['toy_c'\].*task_definitions=PATH"):
        lm.generate_until([Request("Q", greedy, visual, 0, "toy_a", "test"),
                           Request("Q", greedy, visual, 0, "toy_c", "test")])
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"toy_a": definitions["toy_a"]}))
    other = MixLoRA(run=str(run), task_definitions=str(partial))  # the model arg overrides the run's file
    other.task_dict = lm.task_dict
    with pytest.raises(TaskError, match=rf"{partial} has no definition for lmms-eval task\(s\) \['toy_b'\]"):
        other.loglikelihood([Request("Q", " yes", visual, 0, "toy_b", "test")])
    with pytest.raises(TaskError, match="does not route on task definitions"):
        MixLoRA(model_config=str(ROOT / "configs/model/tiny.yaml"), tokenizer_corpus=str(suite / "train.json"),
                task_definitions=str(path))


def test_lmms_eval_registry_finds_the_plugin():
    pytest.importorskip("lmms_eval.models", reason="lmms-eval is optional (pip install lmms-eval)")
    import subprocess

    code = ("import lmms_eval.models as m, lmms_eval.api.model as a; c = m.get_model('mixlora'); "
            "print(c.__module__, c.__name__, issubclass(c, a.lmms))")
    env = {**__import__("os").environ, "LMMS_EVAL_PLUGINS": "mixlora.lmms_plugin"}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["mixlora.lmms_plugin.models.mixlora", "MixLoRA", "True"]


# ---------------------------------------------------------------- real processes


@pytest.mark.slow
def test_lmms_eval_runs_the_plugin_end_to_end(tmp_path):
    """lmms-eval's own evaluator (not just its interface) drives our model class on the plugin's task."""
    pytest.importorskip("lmms_eval.evaluator", reason="needs lmms-eval with its evaluator dependencies")
    import subprocess

    generate_suite(tmp_path / "data/synthetic", seed=0, per_task=1, eval_per_task=6, mme_images=1, stage1_size=0,
                   progress=False)
    cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    tok = build_tokenizer_from_config(cfg.tokenizer, [tmp_path / "data/synthetic/train.json"])
    run = save_run(tmp_path / "run", build_stack(cfg, tok), OmegaConf.create({"model": cfg}))
    tasks_dir = ROOT / "mixlora/lmms_plugin/tasks"
    code = (
        "import json, lmms_eval.evaluator as e; from lmms_eval.tasks import TaskManager; "
        f"r = e.simple_evaluate(model='mixlora', model_args='run={run}', tasks=['mixlora_synth_pope'], limit=6, "
        f"batch_size=2, task_manager=TaskManager(include_path='{tasks_dir}')); "
        "print(json.dumps(r['results']['mixlora_synth_pope']))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path,
                         env={**_env(), "LMMS_EVAL_PLUGINS": "mixlora.lmms_plugin"}, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    # The random split's first 6 questions: 3 yes + 3 no; the same model through our own loop and scorer.
    task = pope.POPETask({"random": str(tmp_path / "data/synthetic/eval/pope/random.jsonl")}, prompt_suffix=SHORT)
    examples = task.examples(limit=6)
    stack, _ = load_run(run)
    said = [t for b in generate_answers(stack, examples, Decoding(max_new_tokens=16), 16, batch_size=2) for _, t in b]
    ours = task.score([dict(e.record, prediction=s) for e, s in zip(examples, said)], tmp_path)
    assert results["pope_f1,none"] == pytest.approx(ours["mean"]["f1"])
    assert results["pope_yes_ratio,none"] == pytest.approx(ours["mean"]["yes_ratio"])
