"""Seen-task set (mixlora.data.seen), its scorer (mixlora.tasks.seen) and the demo's base-mix split.

References: the training generator's own task list and phrasings (prompts must be training instructions),
pixel comparison with the training images (a fresh stream, not copies), and hand-computed accuracies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mixlora.data.base_mix import split_base_mix
from mixlora.data.seen import write_seen
from mixlora.data.synthetic import TRAIN_TASKS, generate_suite
from mixlora.tasks.common import TaskError
from mixlora.tasks.seen import SeenTask


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    generate_suite(out, seed=0, per_task=3, eval_per_task=6, mme_images=1, stage1_size=4, seen_per_task=3,
                   progress=False)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_suite_writes_fresh_instances_of_every_training_task(suite):
    seen = rows(suite / "eval/seen/test.jsonl")
    assert [r["task_name"] for r in seen] == [t.name for t in TRAIN_TASKS for _ in range(3)]
    assert json.loads((suite / "manifest.json").read_text())["eval"]["seen"]["records"] == 3 * len(TRAIN_TASKS)
    train = json.loads((suite / "train.json").read_text())
    for task in TRAIN_TASKS:
        ours = [r for r in seen if r["task_name"] == task.name]
        # Asked with the training phrasings: a fixed phrasing (no {fields}) appears verbatim as the first line.
        fixed = {p for p in task.phrasings if "{" not in p}
        for r in ours:
            assert "<image>" not in r["prompt"]
            first = r["prompt"].split("\nOptions:")[0]
            if fixed and len(fixed) == len(task.phrasings):
                assert first in fixed
    # A fresh random stream: the seen images are not the training images (same file names, other pixels).
    same = 0
    for i, r in enumerate(seen):
        t = train[i]
        assert t["task_name"] == r["task_name"]
        a = Image.open(suite / "eval/seen" / r["image_path"]).tobytes()
        b = Image.open(suite / "images" / t["image"]).tobytes()
        same += a == b
    assert same <= len(seen) // 10


def test_write_seen_refuses_to_overwrite_by_accident(suite):
    with pytest.raises(FileExistsError, match="overwrite"):
        write_seen(suite, per_task=1, progress=False)
    with pytest.raises(ValueError, match="per_task"):
        write_seen(suite, per_task=0, overwrite=True, progress=False)


def record(task, prompt, target, prediction):
    return {"task_name": task, "prompt": prompt, "target": target, "prediction": prediction}


def test_seen_scorer_averages_per_task_accuracies_with_per_task_labels(tmp_path):
    mc = "Which color?\nOptions: (a) red (b) blue (c) green"
    records = [
        record("A+color", mc, "(c) green", "(c)"),          # option letter: correct
        record("A+color", mc, "(c) green", "blue"),         # the text of another option: wrong
        record("A+color", mc, "(a) red", "red"),            # label text: correct
        record("A+color", mc, "(b) blue", "(a) red"),       # wrong letter
        record("B+shape", "Which shape?", "circle", "a circle"),        # whole-word match of its own label
        record("B+where", "Where is it?", "left", "left of the circle"),  # 'circle' is another *task's* label
    ]
    scores = SeenTask(str(tmp_path / "unused.jsonl")).score(records, tmp_path)
    assert scores["per_task"]["A+color"] == {"accuracy": 50.0, "correct": 2, "count": 4}
    assert scores["per_task"]["B+shape"]["accuracy"] == 100.0
    assert scores["per_task"]["B+where"]["accuracy"] == 100.0
    assert scores["average"] == pytest.approx((50 + 100 + 100) / 3)   # Table 2's AVG: mean over tasks
    assert scores["accuracy"] == pytest.approx(100 * 4 / 6)           # over records


def test_seen_examples_are_grouped_per_task_for_limits(suite):
    task = SeenTask(str(suite / "eval/seen/test.jsonl"))
    examples = task.examples(limit=1)
    assert [e.group for e in examples] == [t.name for t in TRAIN_TASKS]
    assert all(e.question == e.record["prompt"] for e in examples)  # no suffix: asked as trained


def test_seen_records_need_a_task_name(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images/0.png")
    (tmp_path / "t.jsonl").write_text(json.dumps({"unique_id": "x", "prompt": "q", "target": "a",
                                                  "image_path": "images/0.png"}) + "\n")
    with pytest.raises(TaskError, match="task_name"):
        SeenTask(str(tmp_path / "t.jsonl")).examples()


def test_base_mix_and_stage2_are_disjoint_and_cover_the_training_set(suite):
    counts = split_base_mix(suite, base_per_task=1)
    base = json.loads((suite / "base_mix.json").read_text())
    stage2 = json.loads((suite / "stage2.json").read_text())
    train = json.loads((suite / "train.json").read_text())
    key = lambda r: (r["task_name"], r["image"])  # noqa: E731  (Vision-Flan ids repeat; this pair is unique)
    base_tasks = [r for r in base if r["task_name"] != "captions"]
    assert counts == {"base_mix": 4 + len(TRAIN_TASKS), "captions": 4, "stage2": 2 * len(TRAIN_TASKS),
                      "tasks": len(TRAIN_TASKS)}
    assert {key(r) for r in base_tasks}.isdisjoint({key(r) for r in stage2})
    assert sorted(map(key, base_tasks + stage2)) == sorted(map(key, train))
    with pytest.raises(ValueError, match="base_per_task=3"):
        split_base_mix(suite, base_per_task=3)
