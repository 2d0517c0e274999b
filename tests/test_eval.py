"""eval.py, the generation loop (mixlora.tasks.evaluate), the task modules (mixlora.tasks) and the lmms-eval plugin.

References are independent of the code under test: hand-written records with hand-computed scores (official
rules of docs/benchmarks.md), prompts written out as literal template strings, the official scorers' CLI run on
the written files, and a plain greedy ``model.generate`` call on hand-built ids.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from mixlora import AdapterConfig, MixLoRALinear, inject_adapters
from mixlora.build import build_stack, build_tokenizer_from_config, load_run, save_run
from mixlora.data.synthetic import generate_suite
from mixlora.scoring.score import main as score_cli
from mixlora.tasks.evaluate import Decoding, evaluate_task, generate_answers, set_decode_routing
from mixlora.tasks import cifar10, cvbench, mme, mnist, pope, snli_ve, textvqa, vsr
from mixlora.tasks.common import Example, TaskError, build_question
from mixlora.tasks.predictions import PredictionFile

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/data"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
SHORT = "Answer the question using a single word or phrase."


def load_eval_script():
    spec = importlib.util.spec_from_file_location("mixlora_eval_script", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_eval(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="eval", overrides=overrides)


def png(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), color).save(path)
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def predictions(records, answers):
    return [{**r, "prediction": a} for r, a in zip(records, answers)]


# ---------------------------------------------------------------- shared tiny setup


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A small synthetic suite (same generator and formats as data/synthetic)."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_suite(root, seed=0, per_task=2, eval_per_task=6, mme_images=2, stage1_size=0, progress=False)
    return root


@pytest.fixture(scope="module")
def stack(suite):
    cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    tok = build_tokenizer_from_config(cfg.tokenizer, [suite / "train.json"])
    return build_stack(cfg, tok)


GREEDY = Decoding(max_new_tokens=3)


# ---------------------------------------------------------------- prompt building


def test_build_question_released_steps():
    assert build_question("What is it?\n[Options]: cat, dog") == "What is it?\nOptions: cat, dog"
    q = "Is there a dog in this image? Please answer yes or no."
    assert build_question(q, " Please answer yes or no.", SHORT) == f"Is there a dog in this image?\n{SHORT}"
    assert build_question(q + "  ", " Please answer yes or no.", SHORT, separator=" ") == \
        f"Is there a dog in this image? {SHORT}"
    assert build_question(q, " Please answer yes or no.", SHORT, prompts="as_is") == q
    assert build_question("Is it red?", " Please answer yes or no.", "") == "Is it red?"  # suffix absent: untouched
    with pytest.raises(ValueError, match="prompts='raw' is not a valid option"):
        build_question(q, prompts="raw")


# ---------------------------------------------------------------- MME


def test_mme_release_and_prepared_layouts_agree(tmp_path):
    src = FIXTURES / "mme/MME_Benchmark_release_version"
    raw = mme.MMETask(str(src)).examples()
    # The fixture has existence (flat, a jpg and a png, CRLF lines) and artwork (images/ + questions_answers_YN/).
    assert [e.uid for e in raw] == ["existence/000000006040.jpg#0", "existence/000000006040.jpg#1",
                                    "existence/000000018921.png#0", "existence/000000018921.png#1",
                                    "artwork/10002.jpg#0", "artwork/10002.jpg#1"]
    assert raw[2].question == f"Is there a dog in this image?\n{SHORT}"
    assert raw[2].record["question"] == "Is there a dog in this image? Please answer yes or no."
    assert raw[2].record["answer"] == "No" and raw[2].group == "existence"
    assert raw[4].image == (src / "artwork/images/10002.jpg").resolve()
    prepared = tmp_path / "prepared"
    for name in ("existence", "artwork"):
        write_jsonl(prepared / f"{name}.jsonl", [e.record for e in raw if e.group == name])
    again = mme.MMETask(str(prepared)).examples()
    assert [(e.uid, e.question, e.record, str(e.image)) for e in again] == \
        [(e.uid, e.question, e.record, str(e.image)) for e in raw]
    limited = mme.MMETask(str(src), subtasks=["existence"]).examples(limit=1)  # one whole image = 2 questions
    assert [e.uid for e in limited] == ["existence/000000006040.jpg#0", "existence/000000006040.jpg#1"]
    with pytest.raises(TaskError, match=r"subtasks \['OCR'\] are not in"):
        mme.MMETask(str(src), subtasks=["OCR"]).examples()


def test_mme_scores_with_official_rules_and_writes_eval_tool(tmp_path):
    task = mme.MMETask(str(FIXTURES / "mme/MME_Benchmark_release_version"))
    records = [dict(e.record, uid=e.uid) for e in task.examples()]
    # existence: img1 (Yes, No) answered "Yes", "No." -> both right; img2 (No, Yes) answered "Not sure" (= no,
    # right), "The answer is yes" (other: wrong). acc = 3/4, acc+ = 1/2 -> 75 + 50 = 125.
    # artwork (Yes, No) answered "yes", "no" -> 200.
    answers = ["Yes", "No.", "Not sure", "The answer is yes", "yes", "no"]
    scores = task.score(predictions(records, answers), tmp_path)
    assert scores["subtasks"]["existence"]["acc"] == 75.0 and scores["subtasks"]["existence"]["acc_plus"] == 50.0
    assert scores["subtasks"]["existence"]["other"] == 1
    assert scores["perception"] == pytest.approx(325.0) and scores["cognition"] == 0.0 and scores["partial"]
    lines = (tmp_path / "eval_tool/existence.txt").read_text().splitlines()
    assert lines[3] == ("000000018921.png\tIs there a car in this image? Please answer yes or no.\tYes\t"
                        "The answer is yes")
    assert task.headline(scores) == {"perception": 325.0, "cognition": 0.0, "total": 325.0}


# ---------------------------------------------------------------- CV-Bench


def test_cvbench_release_folder_and_official_score(tmp_path):
    src = FIXTURES / "cvbench/CV-Bench"
    task = cvbench.CVBenchTask(str(src))
    examples = task.examples()
    assert [e.uid for e in examples][:2] == ["2D/0", "2D/1"]
    assert examples[0].image == src / "img/2D/count/ade20k_1.png"
    assert examples[0].question == ("How many organs are in the image? Select from the following choices.\n(A) 3\n"
                                    "(B) 2\n(C) 1\n(D) 0\nAnswer with the option's letter from the given choices "
                                    "directly.")
    rows = []  # hand-made: ADE20K 2/2 right, COCO 0/1, Omni3D 1/2 -> 2D = (100 + 0)/2 = 50, 3D = 50, overall 50
    for i, (source, kind, task_name, answer, said) in enumerate([
            ("ADE20K", "2D", "Count", "(A)", "(A) 3"), ("ADE20K", "2D", "Count", "(B)", "B"),
            ("COCO", "2D", "Relation", "(A)", "(B) right"), ("Omni3D", "3D", "Depth", "(A)", "A"),
            ("Omni3D", "3D", "Distance", "(B)", "the first one")]):
        rows.append({"idx": i, "type": kind, "task": task_name, "source": source, "answer": answer,
                     "choices": ["x", "y"], "prompt": "Which? Select from the following choices.\n(A) x\n(B) y",
                     "image_path": str(png(tmp_path / f"{i}.png")), "said": said})
    file = write_jsonl(tmp_path / "cvbench.jsonl", rows)
    task = cvbench.CVBenchTask(str(tmp_path))  # a folder with cvbench.jsonl (prepare_cvbench.py output)
    examples = task.examples()
    assert [e.group for e in examples] == ["Count", "Count", "Relation", "Depth", "Distance"]
    assert [e.uid for e in task.examples(limit=1)] == ["2D/0", "2D/2", "3D/3", "3D/4"]  # first per CV-Bench task
    scores = task.score([dict(e.record, prediction=e.record["said"]) for e in examples], tmp_path)
    assert (scores["accuracy_2d"], scores["accuracy_3d"], scores["overall"]) == (50.0, 50.0, 50.0)
    assert scores["by_source"] == {"ADE20K": 100.0, "COCO": 0.0, "Omni3D": 50.0}
    rows[1]["answer"] = "B"
    write_jsonl(file, rows)
    with pytest.raises(TaskError, match=r"cvbench.jsonl line 2: answer 'B' is not of the form"):
        task.examples()
    rows[1]["answer"] = "(C)"  # a third option of two choices: caught when reading, before any generation
    write_jsonl(file, rows)
    with pytest.raises(TaskError, match=r"cvbench.jsonl line 2: answer '\(C\)' points past the 2 choices"):
        task.examples()


# ---------------------------------------------------------------- POPE, TextVQA, classification


def test_pope_splits_limit_and_metrics(tmp_path):
    image = png(tmp_path / "images/0.png")
    splits = {}
    for split in ("random", "adversarial"):
        rows = [{"unique_id": f"{split}-{k}", "prompt": f"Is there a {o} in the image?", "target": t,
                 "image_path": "images/0.png"} for k, (o, t) in enumerate([("cat", "yes"), ("dog", "no"),
                                                                            ("cow", "yes"), ("pig", "no")])]
        splits[split] = str(write_jsonl(tmp_path / f"{split}.jsonl", rows))
    task = pope.POPETask(splits)
    examples = task.examples()
    assert examples[0].uid == "random/random-0" and examples[0].image == image
    assert examples[0].question == f"Is there a cat in the image?\n{SHORT}"
    assert [e.uid for e in task.examples(limit=1)] == ["random/random-0", "adversarial/adversarial-0"]
    # random: yes yes / no->"Yes, there is." (FP) / yes->"No" (FN) / no->"There is not a pig." (TN)
    # TP=1 FP=1 FN=1 TN=1: P = R = F1 = 50, accuracy 50, yes-ratio 50.
    # adversarial: all "yes": TP=2 FP=2: P=50 R=100 F1=66.67, accuracy 50, yes-ratio 100.
    said = ["Yes", "Yes, there is.", "No", "There is not a pig.", "yes", "yes", "yes", "yes"]
    scores = task.score([dict(e.record, prediction=s) for e, s in zip(examples, said)], tmp_path)
    assert scores["splits"]["random"]["f1"] == pytest.approx(50.0)
    assert scores["splits"]["adversarial"]["f1"] == pytest.approx(200 / 3)
    assert scores["splits"]["adversarial"]["yes_ratio"] == 100.0
    assert scores["mean"]["f1"] == pytest.approx((50 + 200 / 3) / 2) and scores["missing_splits"] == ["popular"]
    write_jsonl(tmp_path / "random.jsonl", [{"unique_id": "r", "prompt": "Is there a cat?", "target": "maybe",
                                             "image_path": "images/0.png"}])
    with pytest.raises(TaskError, match="POPE targets are 'yes' or 'no'"):
        task.examples()


def test_textvqa_ten_annotator_rule(tmp_path):
    png(tmp_path / "a.png")
    answers = ["stop"] * 2 + ["go"] * 8
    write_jsonl(tmp_path / "t.jsonl", [
        {"unique_id": 1, "prompt": "What does the sign say?", "target": "stop", "image_path": "a.png",
         "answers": answers},
        {"unique_id": 2, "prompt": "What does the sign say?", "target": "Coca-Cola", "image_path": "a.png"}])
    task = textvqa.TextVQATask(str(tmp_path / "t.jsonl"))
    examples = task.examples()
    assert [e.uid for e in examples] == ["1", "2"]
    # 2 of 10 annotators say "stop": (2 * 1/3 + 8 * 2/3) / 10 = 0.6; "the coca cola." normalises to "coca cola".
    scores = task.score([dict(examples[0].record, prediction="Stop."),
                         dict(examples[1].record, prediction="the coca cola.")], tmp_path)
    assert scores["accuracy"] == pytest.approx((60.0 + 100.0) / 2)


def test_classification_tasks_options_and_labels(tmp_path):
    released = FIXTURES / "released_eval/cifar_10.jsonl"  # "[Options]: airplane, cat, ship" (no letters)
    task = cifar10.build(str(released))
    examples = task.examples()
    assert examples[0].question == f"What is the object in the image?\nOptions: airplane, cat, ship\n{SHORT}"
    assert examples[0].record["prompt"] == "What is the object in the image?\nOptions: airplane, cat, ship"
    assert examples[0].record["original_prompt"].endswith("[Options]: airplane, cat, ship")
    # Labels come from the whole file even when limited, so "a ship or a cat" stays ambiguous (wrong).
    limited = task.examples(limit=1)
    scores = task.score([dict(limited[0].record, prediction="a ship or a cat")], tmp_path)
    assert scores["accuracy"] == 0.0 and scores["labels"] == ["cat", "ship"]
    scores = task.score([dict(limited[0].record, prediction="It is a cat.")], tmp_path)
    assert scores["accuracy"] == 100.0

    png(tmp_path / "i.png")
    write_jsonl(tmp_path / "vsr.jsonl", [
        {"unique_id": "v0", "prompt": "The cat is left of the dog.\nOptions: (a) True (b) False", "target": "True",
         "image_path": "i.png"},
        {"unique_id": "v1", "prompt": "The cat is above the dog.\nOptions: (a) True (b) False", "target": "False",
         "image_path": "i.png"},
        {"unique_id": "v2", "prompt": "The cat is below the dog.\nOptions: (a) True (b) False", "target": "False",
         "image_path": "i.png"}])
    task = vsr.build(str(tmp_path / "vsr.jsonl"))
    records = [e.record for e in task.examples()]
    # (a) names option a = True: right; "(a)" for a False target: wrong; "false" equals the label: right.
    scores = task.score(predictions(records, ["(a)", "(a) True", "false"]), tmp_path)
    assert scores["correct"] == 2 and task.mmavg_set == "vsr"
    assert {snli_ve.build("x").mmavg_set, mnist.build("x").mmavg_set} == {"snli_ve", "mnist"}


def test_task_input_errors_name_file_line_and_fix(tmp_path):
    png(tmp_path / "i.png")
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"unique_id": "a", "prompt": "Q?", "target": "x", "image_path": "i.png"},
        {"unique_id": "b", "target": "x", "image_path": "i.png"}])
    with pytest.raises(TaskError, match=r"mnist: .*bad.jsonl line 2: field 'prompt' must be a non-empty string"):
        mnist.build(str(bad)).examples()
    write_jsonl(bad, [{"unique_id": "a", "prompt": "Q?", "target": "x", "image_path": "i.png"},
                      {"unique_id": "a", "prompt": "Q?", "target": "y", "image_path": "i.png"}])
    with pytest.raises(TaskError, match=r"line 2 repeats id 'a' \(first at .*line 1\)"):
        mnist.build(str(bad)).examples()
    write_jsonl(bad, [{"unique_id": "a", "prompt": "Q?", "target": "x", "image_path": "missing.png"}])
    with pytest.raises(TaskError, match=r"missing.png does not exist.*task.mnist.image_root"):
        mnist.build(str(bad)).examples()
    with pytest.raises(TaskError, match=r"mnist: evaluation file .*nope.jsonl does not exist"):
        mnist.build(str(tmp_path / "nope.jsonl")).examples()
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="holds neither <subtask>.jsonl files"):
        mme.MMETask(str(tmp_path / "empty")).examples()
    write_jsonl(tmp_path / "mme/OCR.jsonl", [{"question_id": "OCR/a.png", "category": "OCR", "image": "a.png",
                                               "image_path": "i.png", "question": "Q?", "answer": "yes"}])
    with pytest.raises(TaskError, match=r"OCR.jsonl line 1: answer 'yes' must be 'Yes' or 'No'"):
        mme.MMETask(str(tmp_path / "mme")).examples()


# ---------------------------------------------------------------- predictions file and resume


def test_prediction_file_torn_line_bad_line_and_settings(tmp_path):
    store = PredictionFile(tmp_path, {"a": 1})
    store.append([{"uid": "1", "prediction": "x"}, {"uid": "2", "prediction": "y"}])
    with open(store.path, "a") as f:
        f.write('{"uid": "3", "predic')  # killed mid-write
    assert sorted(PredictionFile(tmp_path, {"a": 1}).load()) == ["1", "2"]
    assert store.path.read_text().endswith('"y"}\n')  # the torn tail is gone, the file is appendable again
    with pytest.raises(TaskError, match=r"other settings \(a: 1 -> 2\).*overwrite=true"):
        PredictionFile(tmp_path, {"a": 2})
    assert PredictionFile(tmp_path, {"a": 2}, overwrite=True).load() == {}
    store = PredictionFile(tmp_path, {"a": 2})
    store.path.write_text('{"uid": "1", "prediction": "x"}\nnot json\n{"uid": "2", "prediction": "y"}\n')
    with pytest.raises(TaskError, match=r"predictions.jsonl line 2: not a JSON object"):
        store.load()


def test_resume_skips_finished_samples_and_matches_an_uninterrupted_run(stack, suite, tmp_path):
    task = textvqa.TextVQATask(str(suite / "eval/textvqa/test.jsonl"))
    calls = []
    generate = stack.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 2 and crash["now"]:
            raise KeyboardInterrupt("killed")  # dies in the second batch, after the first was written
        return generate(*args, **kwargs)

    crash = {"now": True}
    stack.model.generate = counting
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate_task(stack, task, tmp_path / "a", GREEDY, batch_size=2, limit=5, progress=False)
        lines = (tmp_path / "a/eval/textvqa/predictions.jsonl").read_text().splitlines()
        assert len(lines) == 2 and calls == [2, 2]
        first = json.loads(lines[0])
        first["prediction"] = "MARKER"  # a pre-filled answer must be kept, not regenerated
        (tmp_path / "a/eval/textvqa/predictions.jsonl").write_text(json.dumps(first) + "\n" + lines[1] + "\n")
        crash["now"], calls[:] = False, []
        metrics = evaluate_task(stack, task, tmp_path / "a", GREEDY, batch_size=2, limit=5, progress=False)
        assert calls == [2, 1] and metrics["reused"] == 2 and metrics["generated"] == 3
        calls[:] = []
        fresh = evaluate_task(stack, task, tmp_path / "b", GREEDY, batch_size=2, limit=5, progress=False)
        assert calls == [2, 2, 1]
        again = evaluate_task(stack, task, tmp_path / "a", GREEDY, batch_size=2, limit=5, progress=False)
        assert calls == [2, 2, 1] and again["generated"] == 0  # nothing left to generate
    finally:
        stack.model.generate = generate
    resumed = [json.loads(x) for x in (tmp_path / "a/eval/textvqa/predictions.jsonl").read_text().splitlines()]
    uninterrupted = [json.loads(x) for x in (tmp_path / "b/eval/textvqa/predictions.jsonl").read_text().splitlines()]
    assert resumed[0]["prediction"] == "MARKER"
    assert [r["prediction"] for r in resumed[1:]] == [r["prediction"] for r in uninterrupted[1:]]
    assert fresh["samples"] == metrics["samples"] == 5
    with pytest.raises(TaskError, match=r"other settings \(decoding.template: 'vicuna_v1' -> 'llava_v1'\)"):
        evaluate_task(stack, task, tmp_path / "a", Decoding(template="llava_v1", max_new_tokens=3), batch_size=2,
                      limit=5, progress=False)


# ---------------------------------------------------------------- generation against a hand-built reference


def test_batched_generation_equals_plain_greedy_generate_on_literal_prompts(stack, suite):
    task = textvqa.TextVQATask(str(suite / "eval/textvqa/test.jsonl"))
    examples = task.examples(limit=3)
    got = [text for batch in generate_answers(stack, examples, GREEDY, 3, batch_size=3) for _, text in batch]
    tok, model = stack.tokenizer, stack.model
    image_id = tok.convert_tokens_to_ids("<image>")
    for ex, text in zip(examples, got):
        literal = f"{VICUNA_SYSTEM} USER: <image>\n{ex.record['prompt']}\n{SHORT} ASSISTANT:"
        ids = [tok.bos_token_id] + tok(literal, add_special_tokens=False)["input_ids"]
        k = ids.index(image_id)
        ids = torch.tensor([ids[:k] + [image_id] * model.num_image_tokens + ids[k + 1:]])
        pixels = stack.image_processor(Image.open(ex.image)).unsqueeze(0)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                             max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(out[0], skip_special_tokens=True).strip()


def test_released_decoding_config_and_sampling_is_seeded(stack, suite):
    cfg = compose_eval(["run=null", "decoding=released"])
    decoding = Decoding.coerce(cfg.decoding)
    assert (decoding.template, decoding.do_sample, decoding.temperature, decoding.max_new_tokens, decoding.prompts) \
        == ("llava_v1", True, 0.2, 1024, "as_is")
    task = mme.MMETask(str(suite / "eval/mme"), subtasks=["color"])
    examples = task.examples(prompts="as_is")
    assert examples[0].question.endswith("Please answer yes or no.")
    short = Decoding(template="llava_v1", do_sample=True, temperature=0.2, max_new_tokens=4, prompts="as_is")
    draw = [[t for b in generate_answers(stack, examples, short, 4, batch_size=2) for _, t in b] for _ in range(2)]
    assert draw[0] == draw[1]  # same seed, same draws
    with pytest.raises(ValueError, match="temperature=0 must be > 0"):
        Decoding(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="unknown decoding key"):
        Decoding.coerce({"temprature": 0.2})


# ---------------------------------------------------------------- eval.py end to end


def test_eval_py_base_model_end_to_end_and_cli_rescoring(suite, tmp_path, capsys):
    script = load_eval_script()
    out = tmp_path / "out"
    cfg = compose_eval(["run=null", "model=tiny", f"data_root={suite}", f"output_dir={out}", "limit=2",
                        "decoding.max_new_tokens=2", "batch_size=4", "progress=false",
                        f"tokenizer_cache={tmp_path / 'tok'}", "tasks=[mme,cvbench,pope,textvqa,vsr,snli_ve,cifar10,"
                        "cifar100,mnist,seen]"])
    summary = script.run_eval(cfg)
    tasks = ["mme", "cvbench", "pope", "textvqa", "vsr", "snli_ve", "cifar10", "cifar100", "mnist", "seen"]
    assert list(summary["tasks"]) == tasks
    for name in tasks:
        for f in ("predictions.jsonl", "settings.json", "metrics.json"):
            assert (out / "eval" / name / f).is_file(), (name, f)
    assert (out / "eval/results.md").read_text().count("\n| ") == 12  # header, 10 tasks, MMAvg
    assert summary["partial"] and summary["limit"] == 2
    seven = tasks[2:9]  # MMAvg's sets: not MME, CV-Bench or the seen tasks
    assert sorted(summary["mmavg"]["sets"]) == sorted(seven) and not summary["mmavg"]["partial"]
    expected = sum(summary["tasks"][t]["headline"]["f1" if t == "pope" else "accuracy"] for t in seven) / 7
    assert summary["mmavg"]["mmavg"] == pytest.approx(expected)
    assert json.loads((out / "eval/metrics.json").read_text()) == json.loads(json.dumps(summary))
    # 7 synthetic MME subtasks x 1 image x 2 questions; every image's two questions on consecutive lines.
    tool = sorted(p.stem for p in (out / "eval/mme/eval_tool").glob("*.txt"))
    assert tool == ["OCR", "color", "count", "existence", "numerical_calculation", "position", "scene"]

    def cli(*argv):
        capsys.readouterr()
        assert score_cli(list(map(str, argv))) == 0
        return json.loads(capsys.readouterr().out)

    def stored(name):
        return json.loads((out / "eval" / name / "metrics.json").read_text())["scores"]

    ev = out / "eval"
    assert cli("mme", ev / "mme/eval_tool") == stored("mme")
    assert cli("cvbench", ev / "cvbench/predictions.jsonl") == stored("cvbench")
    assert cli("pope", ev / "pope/predictions.jsonl") == stored("pope")
    assert cli("textvqa", ev / "textvqa/predictions.jsonl") == stored("textvqa")
    for name in ("vsr", "snli_ve", "cifar10", "cifar100", "mnist"):
        scores = stored(name)
        assert cli("classification", ev / name / "predictions.jsonl", "--task", name, "--labels",
                   *scores["labels"]) == scores
    record = json.loads((ev / "cifar10/predictions.jsonl").read_text().splitlines()[0])
    assert record["asked"].endswith(SHORT) and record["uid"] == "cifar10-00000" and "target" in record


def test_eval_of_a_saved_run_directory(suite, tmp_path):
    script = load_eval_script()
    cfg_model = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    tok = build_tokenizer_from_config(cfg_model.tokenizer, [suite / "train.json"])
    stack = build_stack(cfg_model, tok)
    inject_adapters(stack.model.llm, AdapterConfig(num_factors=4, rank=2, decode_routing="prefill"))
    torch.manual_seed(0)
    with torch.no_grad():
        for m in stack.model.llm.modules():
            if isinstance(m, MixLoRALinear):
                m.lora_b.normal_(std=0.5)  # a "trained" adapter changes the answers
    run = save_run(tmp_path / "run", stack, OmegaConf.create({"model": cfg_model}))
    cfg = compose_eval([f"run={run}", f"data_root={suite}", "tasks=[pope]", "limit=1", "decoding.max_new_tokens=3",
                        "progress=false"])
    summary = script.run_eval(cfg)
    assert summary["source"]["adapter"] == "mixlora E=4 r=2 decode_routing=prefill"
    written = [json.loads(x) for x in (run / "eval/pope/predictions.jsonl").read_text().splitlines()]
    assert len(written) == 3 and (run / "eval/results.md").is_file()
    loaded, _ = load_run(run)
    loaded.model.eval()
    task = pope.POPETask(OmegaConf.to_container(cfg.task.pope.splits, resolve=True))
    reference = [t for b in generate_answers(loaded, task.examples(limit=1), GREEDY, 3, batch_size=1) for _, t in b]
    assert [r["prediction"] for r in written] == reference
    # A run moved elsewhere (another machine, a shared folder) resumes its evaluation: the settings name the
    # weights, not the path.
    moved = tmp_path / "moved/run"
    shutil.move(str(run), str(moved))
    cfg = compose_eval([f"run={moved}", f"data_root={suite}", "tasks=[pope]", "limit=2", "decoding.max_new_tokens=3",
                        "progress=false"])
    script.run_eval(cfg)
    again = [json.loads(x) for x in (moved / "eval/pope/predictions.jsonl").read_text().splitlines()]
    assert again[:3] == written and len(again) == 6  # limit=2: two examples per split, the first three kept
    assert set_decode_routing(loaded.model, "per_step") == len(
        [m for m in loaded.model.modules() if isinstance(m, MixLoRALinear)]) > 0
    with pytest.raises(ValueError, match="decode_routing='sometimes' is not a valid option"):
        set_decode_routing(loaded.model, "sometimes")


def test_eval_config_errors_and_synthetic_generation(tmp_path):
    script = load_eval_script()
    with pytest.raises(ValueError, match=r"tasks lists 'mmbench', but there is no task config"):
        script.build_tasks(compose_eval(["run=null", "tasks=[mmbench]"]))
    root = tmp_path / "suite"
    assert script.ensure_synthetic_suite(root, seed=0, per_task=1, eval_per_task=6, mme_images=1, stage1_size=0,
                                         progress=False)
    assert (root / "manifest.json").is_file() and (root / "eval/pope/random.jsonl").is_file()
    assert not script.ensure_synthetic_suite(root)  # present: left alone
    assert [p.name for p in tmp_path.iterdir()] == ["suite"]  # no temporary folder left behind
    half = tmp_path / "half"
    (half / "eval").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="holds no manifest.json"):
        script.ensure_synthetic_suite(half)
    cfg = compose_eval(["run=null", f"data_root={root}", "tasks=[mme]", "task.mme.path=/elsewhere"])
    assert script.needs_synthetic(cfg)  # the base model's tokenizer corpus is in the suite
    cfg = compose_eval([f"run={tmp_path}", f"data_root={root}", "tasks=[mme]", "task.mme.path=/elsewhere"])
    assert not script.needs_synthetic(cfg)


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

    cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    tok = build_tokenizer_from_config(cfg.tokenizer, [suite / "train.json"])
    stack = build_stack(cfg, tok)
    inject_adapters(stack.model.llm, AdapterConfig(num_factors=4, rank=2, routing_source="task"))
    torch.manual_seed(0)
    with torch.no_grad():
        for m in stack.model.llm.modules():
            if isinstance(m, MixLoRALinear):
                m.lora_b.normal_(std=0.5)  # every factor choice changes the answers
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


def _env():
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_eval_py_batch_log_gets_a_plain_line_per_interval(suite, tmp_path):
    """stdout and stderr are pipes, as under a batch system: progress=auto writes plain lines (here after every
    batch, progress_every_s=0) instead of a bar; a bad progress value stops before any work."""
    import re
    import subprocess

    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "eval.py"), "run=null", "model=tiny", f"data_root={suite}",
               f"output_dir={out}", "tasks=[pope]", "limit=1", "batch_size=2", "decoding.max_new_tokens=2",
               f"tokenizer_cache={tmp_path / 'tok'}", "progress_every_s=0"]
    proc = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr  # no bar redraws
    pattern = r"(pope): (\d+)/(\d+) examples \| (\d+\.\d) ex/s \| ETA (\S+)$"
    lines = [m for m in (re.search(pattern, line) for line in proc.stdout.splitlines()) if m]
    # POPE at limit=1: one question per split (3), in batches of 2 -> a line after 2, then after 3
    assert [(int(m[2]), int(m[3])) for m in lines] == [(2, 3), (3, 3)]
    assert re.fullmatch(r"\d+:\d\d:\d\d", lines[0][5]) and lines[1][5] == "0:00:00"
    script = load_eval_script()
    for extra, message in (("progress=sometimes", r"progress='sometimes' is not a valid option"),
                           ("progress_every_s=-1", r"progress_every_s=-1 must be a number of seconds >= 0")):
        with pytest.raises(TaskError, match=message):  # eval.py prints it and exits with status 2
            script.run_eval(compose_eval([*command[2:], extra, f"output_dir={tmp_path / 'bad'}"]))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # two eval.py processes (~6-15 s of imports each); the in-process resume test runs by default
def test_eval_py_killed_mid_task_resumes_where_it_stopped(suite, tmp_path):
    import subprocess
    import time

    out = tmp_path / "out"
    overrides = ["run=null", "model=tiny", f"data_root={suite}", f"output_dir={out}", "tasks=[mme]", "batch_size=1",
                 "task.mme.subtasks=[color,count,scene]", "decoding.max_new_tokens=32",
                 f"tokenizer_cache={tmp_path / 'tok'}", "progress=false"]
    command = [sys.executable, str(ROOT / "eval.py"), *overrides]
    preds = out / "eval/mme/predictions.jsonl"
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if preds.is_file() and preds.read_text().count("\n") >= 2:
            proc.kill()  # SIGKILL: no clean-up code runs
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -9, proc.stderr.read().decode()[-2000:]
    done = len(preds.read_text().splitlines())
    assert 2 <= done < 12  # 3 subtasks x 2 images x 2 questions
    finished = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "| mme (partial) | 12 |" in finished.stdout  # the results table is printed
    metrics = json.loads((out / "eval/mme/metrics.json").read_text())
    assert (metrics["reused"], metrics["generated"], metrics["samples"]) == (done, 12 - done, 12)
    reference = load_eval_script().run_eval(compose_eval([o.replace(str(out), str(tmp_path / "ref"))
                                                          for o in overrides]))
    assert reference["tasks"]["mme"]["samples"] == 12
    resumed = [json.loads(x) for x in preds.read_text().splitlines()]
    uninterrupted = [json.loads(x) for x in (tmp_path / "ref/eval/mme/predictions.jsonl").read_text().splitlines()]
    assert resumed == uninterrupted


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


def test_second_eval_py_on_the_same_output_exits_2_and_writes_nothing(suite, tmp_path):
    """While another process evaluates OUT, eval.py on OUT stops with exit 2 before writing any prediction."""
    import os
    import subprocess

    from mixlora.runlock import run_lock

    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "eval.py"), "run=null", "model=tiny", f"data_root={suite}",
               f"output_dir={out}", "tasks=[pope]", "limit=1", f"tokenizer_cache={tmp_path / 'tok'}", "progress=false"]
    with run_lock(out / "eval", what="eval"):  # this test process is the first evaluation of OUT
        second = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert second.returncode == 2, second.stderr[-2000:]
    assert "Traceback" not in second.stderr and second.stdout == ""
    assert f"error: {out / 'eval'} is in use by another process (pid {os.getpid()}: eval:" in second.stderr
    assert "Wait for it to finish, or choose another output folder" in second.stderr
    assert not (out / "eval/pope").exists()


def test_eval_of_a_missing_run_directory_creates_nothing(suite, tmp_path):
    missing = tmp_path / "no_such_run"
    cfg = compose_eval([f"run={missing}", f"data_root={suite}", "tasks=[pope]", "limit=1", "progress=false"])
    with pytest.raises(FileNotFoundError, match=rf"run={missing}: no such directory"):
        load_eval_script().run_eval(cfg)
    assert not missing.exists()  # the output lock (RUN/eval/.lock) must not conjure up a run folder
