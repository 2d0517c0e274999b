"""The task modules (mixlora.tasks): prompt building, MME, CV-Bench, POPE, TextVQA and the classification sets,
and the errors their input files raise.

References are independent of the code under test: the release-format fixtures in tests/fixtures/data/,
hand-written records with hand-computed scores (official rules of docs/benchmarks.md) and prompts written out as
literal strings. The generation loop and eval.py are tested in test_eval.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from eval_setup import ROOT, SHORT
from mixlora.tasks import cifar10, cvbench, mme, mnist, pope, snli_ve, textvqa, vsr
from mixlora.tasks.common import TaskError, build_question


FIXTURES = ROOT / "tests/fixtures/data"


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
