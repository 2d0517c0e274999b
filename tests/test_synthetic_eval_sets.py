"""Tests of the synthetic suite's held-out evaluation sets (mixlora/data/synthetic/): MME, CV-Bench, the MixLoRA
JSONL sets and POPE, and that they stay zero-shot (no held-out set or question is a training task).

The references are independent of the generator: the public record formats (MME release, CV-Bench, POPE,
MixLoRA eval JSONL; docs/benchmarks.md) and the pixels themselves, read with the tools of synthetic_suite.py
(nearest CSS colour, exact-colour pixel groups, pixel centroids).
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from mixlora.data import synthetic
from synthetic_suite import (_centroid, _extent, _foreground_colors,  # noqa: F401  (suite, train: fixtures)
                             _holds, _jsonl, _object_mask, _pixels, _plain, suite, train)


MME_OFFICIAL = {"existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                "OCR", "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"}
MME_RELEASE_NESTED = {"artwork", "celebrity", "landmark", "posters", "scene"}


# ---------------------------------------------------------------------------------------------------- MME


def _mme_pairs(suite: Path):
    """(subtask, image path, [(question, answer), ...]) over the release's flat and nested layouts."""
    for sub in sorted((suite / "eval" / "mme").iterdir()):
        nested = (sub / "questions_answers_YN").is_dir()
        txts = sorted((sub / "questions_answers_YN" if nested else sub).glob("*.txt"))
        for txt in txts:
            image = (sub / "images" if nested else sub) / (txt.stem + ".png")
            lines = txt.read_text().splitlines()
            yield sub.name, image, [tuple(line.split("\t")) for line in lines]


def test_mme_folders_follow_the_release_layout(suite):
    subs = {p.name for p in (suite / "eval" / "mme").iterdir()}
    assert {"existence", "count", "position", "color"} <= subs and subs <= MME_OFFICIAL and len(subs) >= 6
    for name in subs:
        nested = (suite / "eval" / "mme" / name / "questions_answers_YN").is_dir()
        assert nested == (name in MME_RELEASE_NESTED)
        flat_pngs = list((suite / "eval" / "mme" / name).glob("*.png"))
        assert (len(flat_pngs) == 0) == nested
    n = 0
    for sub, image, pairs in _mme_pairs(suite):
        assert len(pairs) == 2 and all(len(p) == 2 for p in pairs), (sub, image)
        assert sorted(a for _, a in pairs) == ["No", "Yes"]
        assert all(q.endswith(" Please answer yes or no.") for q, _ in pairs)
        with Image.open(image) as im:
            assert im.size == (64, 64)
        n += 1
    assert n == 6 * len(subs)


def test_mme_color_and_position_answers_match_pixels(suite):
    for sub, image, pairs in _mme_pairs(suite):
        a = _pixels(image)
        for question, answer in pairs:
            if sub == "color":
                colour = re.match(r"Is the \w+ in this image (\w+)\?", question).group(1)
                assert (colour in _foreground_colors(a)) == (answer == "Yes"), (image, question)
            if sub == "position":
                m = re.match(r"Is the (\w+) \w+ (on the left of|on the right of|above|below) the (\w+) \w+\?",
                             question)
                rel = {"on the left of": "left", "on the right of": "right"}.get(m.group(2), m.group(2))
                holds = _holds(rel, _centroid(_object_mask(a, m.group(1))), _centroid(_object_mask(a, m.group(3))))
                assert holds == (answer == "Yes"), (image, question)


# ---------------------------------------------------------------------------------------------------- CV-Bench


def test_cvbench_records_follow_the_release_format(suite):
    root = suite / "eval" / "cvbench"
    rows = _jsonl(root / "test.jsonl")
    assert len(rows) == 4 * 12 and [r["idx"] for r in rows] == list(range(len(rows)))
    folders = {"Count": "img/2D/count/", "Relation": "img/2D/relation/", "Depth": "img/3D/depth/",
               "Distance": "img/3D/distance/"}
    fields = {"idx", "type", "task", "image", "question", "choices", "answer", "prompt", "filename", "source",
              "source_dataset", "source_filename", "target_class", "target_size", "bbox"}
    for r in rows:
        assert set(r) == fields
        assert r["type"] == ("2D" if r["task"] in ("Count", "Relation") else "3D")
        assert r["source"] in (("ADE20K", "COCO") if r["type"] == "2D" else ("Omni3D",))
        letter = re.fullmatch(r"\(([A-Z])\)", r["answer"]).group(1)
        assert ord(letter) - 65 < len(r["choices"])
        expected = r["question"] + " Select from the following choices." + "".join(
            f"\n({'ABCDEF'[i]}) {c}" for i, c in enumerate(r["choices"]))
        assert r["prompt"] == expected
        assert r["filename"] == r["image"] and r["image"].startswith(folders[r["task"]])
        assert (root / r["image"]).is_file()
    assert {r["source"] for r in rows} == {"ADE20K", "COCO", "Omni3D"}


def test_cvbench_answers_match_pixels(suite):
    root = suite / "eval" / "cvbench"
    for r in _jsonl(root / "test.jsonl"):
        a = _pixels(root / r["image"])
        chosen = r["choices"][ord(r["answer"][1]) - 65]
        if r["task"] == "Relation":
            m = re.match(r"Considering the relative positions of the (\w+) \w+ and the (\w+) \w+", r["question"])
            assert _holds(chosen, _centroid(_object_mask(a, m.group(1))), _centroid(_object_mask(a, m.group(2))))
        elif r["task"] == "Distance":
            m = re.search(r"closer to the (\w+) \w+, the (\w+) \w+ or the (\w+) \w+\?", r["question"])
            ref, x, y = (_centroid(_object_mask(a, m.group(i))) for i in (1, 2, 3))
            near = m.group(2) if np.hypot(x[0] - ref[0], x[1] - ref[1]) < np.hypot(y[0] - ref[0], y[1] - ref[1]) \
                else m.group(3)
            assert chosen.split()[0] == near
        elif r["task"] == "Depth":
            other = next(c for c in r["choices"] if c != chosen)
            closer, farther = _object_mask(a, chosen.split()[0]), _object_mask(a, other.split()[0])
            assert _extent(closer) > _extent(farther) and _centroid(closer)[1] > _centroid(farther)[1]
        elif r["task"] == "Count":
            assert r["question"].startswith("How many ") and chosen.isdigit()


# ---------------------------------------------------------------------------------------------------- MixLoRA JSONL sets


def test_eval_jsonl_sets_have_the_released_fields(suite):
    for name in ("cifar10", "cifar100", "mnist", "vsr", "snli_ve", "textvqa"):
        root = suite / "eval" / name
        rows = _jsonl(root / "test.jsonl")
        assert len(rows) == 12 and len({r["unique_id"] for r in rows}) == 12
        for r in rows:
            assert {"unique_id", "prompt", "target", "image_path"} <= set(r)
            assert "<image>" not in r["prompt"] and r["target"]
            assert (root / r["image_path"]).is_file()
            if "\nOptions: " in r["prompt"]:
                listed = re.findall(r"\([a-z]\) (\S+)", r["prompt"].split("\nOptions: ")[1])
                assert r["target"] in listed and listed == r["options"]


def test_eval_label_balance_and_label_sets(suite):
    manifest = json.loads((suite / "manifest.json").read_text())
    vsr = collections.Counter(r["target"] for r in _jsonl(suite / "eval/vsr/test.jsonl"))
    assert vsr == {"True": 6, "False": 6}
    snli = collections.Counter(r["target"] for r in _jsonl(suite / "eval/snli_ve/test.jsonl"))
    assert snli == {"entailment": 4, "neutral": 4, "contradiction": 4}
    assert len(manifest["eval"]["cifar10"]["label_set"]) == 10
    assert len(manifest["eval"]["cifar100"]["label_set"]) >= 20
    for name in ("cifar10", "cifar100", "mnist"):
        labels = set(manifest["eval"][name]["label_set"])
        assert {r["target"] for r in _jsonl(suite / f"eval/{name}/test.jsonl")} <= labels


def test_cifar100_colour_matches_pixels(suite):
    checked = 0
    for r in _jsonl(suite / "eval/cifar100/test.jsonl"):
        a = _pixels(suite / "eval/cifar100" / r["image_path"])
        if _plain(a):
            assert _foreground_colors(a) == [r["target"].split()[0]]
            checked += 1
    assert checked >= 3


def test_vsr_statements_match_pixels(suite):
    phrases = {"is left of": "left", "is right of": "right", "is above": "above", "is below": "below"}
    for r in _jsonl(suite / "eval/vsr/test.jsonl"):
        a = _pixels(suite / "eval/vsr" / r["image_path"])
        m = re.search(r"The (\w+) \w+ (is left of|is right of|is above|is below) the (\w+) \w+\.", r["prompt"])
        if not _plain(a):
            continue
        holds = _holds(phrases[m.group(2)], _centroid(_object_mask(a, m.group(1))),
                       _centroid(_object_mask(a, m.group(3))))
        assert holds == (r["target"] == "True")


def test_textvqa_has_ten_answers_with_the_target_as_strict_mode(suite):
    rows = _jsonl(suite / "eval/textvqa/test.jsonl")
    for r in rows:
        assert len(r["answers"]) == 10
        counts = collections.Counter(r["answers"]).most_common()
        assert counts[0][0] == r["target"] and (len(counts) == 1 or counts[1][1] < counts[0][1])
    assert any(len(set(r["answers"])) > 1 for r in rows)  # variation exercises the VQA accuracy rule


def test_pope_splits_are_balanced_and_share_positive_questions(suite):
    root = suite / "eval" / "pope"
    splits = {s: _jsonl(root / f"{s}.jsonl") for s in ("random", "popular", "adversarial")}
    positives = {}
    for split, rows in splits.items():
        targets = collections.Counter(r["target"] for r in rows)
        assert targets["yes"] == targets["no"] == len(rows) // 2 and set(targets) == {"yes", "no"}
        for r in rows:
            assert re.fullmatch(r"Is there a [a-z]+ in the image\?", r["prompt"])
            assert (root / r["image_path"]).is_file()
        by_image = collections.defaultdict(lambda: {"yes": set(), "no": set()})
        for r in rows:
            by_image[r["image_path"]][r["target"]].add(r["prompt"])
        for q in by_image.values():
            assert len(q["yes"]) == len(q["no"]) == 3 and not q["yes"] & q["no"]
        positives[split] = {k: v["yes"] for k, v in by_image.items()}
    assert positives["random"] == positives["popular"] == positives["adversarial"]


def test_pope_negative_samplers_follow_pope_definitions():
    """Hand-made statistics: 'popular' = most frequent absent, 'adversarial' = most co-occurring absent."""
    import random
    freq = {s: 0 for s in synthetic.SHAPES}
    freq.update({"circle": 9, "square": 8, "star": 7, "ring": 1})
    co = collections.defaultdict(int)
    co[("circle", "ring")] = 5
    co[("circle", "diamond")] = 3
    co[("triangle", "arrow")] = 4
    neg = synthetic.pope_negatives(["circle", "triangle", "hexagon"], freq, co, random.Random(0))
    assert neg["popular"] == ["square", "star", "ring"]
    assert neg["adversarial"] == ["ring", "arrow", "diamond"]
    assert len(set(neg["random"])) == 3 and not set(neg["random"]) & {"circle", "triangle", "hexagon"}


# ---------------------------------------------------------------------------------------------------- zero-shot


def test_held_out_sets_are_not_training_tasks(suite, train):
    task_names = {r["task_name"] for r in train}
    held_out = {p.name for p in (suite / "eval").iterdir()} | {p.name for p in (suite / "eval/mme").iterdir()}
    held_out |= {"Count", "Relation", "Depth", "Distance"}
    for name in task_names:
        source, task = name.split("+")
        assert name not in held_out and task not in held_out and task.lower() not in {h.lower() for h in held_out}
    # No held-out question is ever a training instruction.
    instructions = {r["conversations"][0]["value"].removesuffix("\n<image>").split("\nOptions: ")[0] for r in train}
    questions = []
    for name in ("cifar10", "cifar100", "mnist", "vsr", "snli_ve", "textvqa"):
        questions += [r["prompt"].split("\nOptions: ")[0] for r in _jsonl(suite / f"eval/{name}/test.jsonl")]
    for split in ("random", "popular", "adversarial"):
        questions += [r["prompt"] for r in _jsonl(suite / f"eval/pope/{split}.jsonl")]
    questions += [r["question"] for r in _jsonl(suite / "eval/cvbench/test.jsonl")]
    for _, _, pairs in _mme_pairs(suite):
        questions += [q.removesuffix(" Please answer yes or no.") for q, _ in pairs]
    assert not instructions & set(questions)


def test_manifest_records_counts_closest_tasks_and_reasons(suite, train):
    m = json.loads((suite / "manifest.json").read_text())
    assert m["seed"] == 0 and m["image_size"] == 64
    task_names = {r["task_name"] for r in train}
    assert set(m["train"]["tasks"]) == task_names
    assert all(v["records"] == 12 for v in m["train"]["tasks"].values())
    assert m["stage1"]["records"] == 12

    def check(entry):
        assert entry["closest_training_tasks"] and set(entry["closest_training_tasks"]) <= task_names
        assert isinstance(entry["zero_shot_reason"], str) and len(entry["zero_shot_reason"]) > 20

    for name, sub in m["eval"]["mme"]["subtasks"].items():
        check(sub)
        assert sub["images"] == len(list((suite / "eval/mme" / name).rglob("*.png")))
    for task in m["eval"]["cvbench"]["tasks"].values():
        check(task)
    for name in ("cifar10", "cifar100", "mnist", "vsr", "snli_ve", "textvqa", "pope"):
        check(m["eval"][name])
        assert m["eval"][name]["images"] == len(list((suite / "eval" / name / "images").glob("*.png")))
    assert m["eval"]["pope"]["records"] == {"random": 12, "popular": 12, "adversarial": 12}
