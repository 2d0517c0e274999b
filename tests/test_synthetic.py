"""Tests of the synthetic task suite (mixlora/data/synthetic/, data/make_synthetic.py): determinism and the CLI,
the training records (train.json, stage1.json) and their ground truth, the images and vocabulary, and the task
definitions. The held-out evaluation sets are tested in test_synthetic_eval_sets.py.

The references are independent of the generator: the public Vision-Flan record format (docs/benchmarks.md) and
the pixels themselves, read with the tools of synthetic_suite.py (nearest CSS colour, exact-colour pixel groups,
connected components, pixel centroids).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixlora.data import synthetic
from synthetic_suite import (ANCHORS, SMALL, _centroid, _components, _extent,  # noqa: F401  (suite, train: fixtures)
                             _foreground_colors, _holds, _jsonl, _nearest_anchor, _object_mask, _pixels, _plain,
                             suite, train)


REPO = Path(__file__).resolve().parents[1]
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- pixel tools


def test_pixel_tools_on_a_hand_drawn_image():
    """The helpers themselves, on an image drawn here: two red blobs (one touching diagonally) and a blue bar."""
    a = np.zeros((10, 10, 3), dtype=np.int64) + 200
    a[1:3, 1:3] = (230, 20, 20)
    a[3, 3] = (230, 20, 20)  # diagonal neighbour: same component
    a[6:8, 6:8] = (230, 20, 20)
    a[1, 6:9] = (10, 10, 240)
    red = _object_mask(a, "red")
    assert _components(red) == 2 and red.sum() == 9
    assert _centroid(_object_mask(a, "blue")) == (7.0, 1.0)
    assert sorted(_foreground_colors(a, 1)) == ["blue", "red"]


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_differs(suite, tmp_path):
    synthetic.generate_suite(tmp_path / "again", seed=0, image_size=64, **SMALL)
    synthetic.generate_suite(tmp_path / "other", seed=1, image_size=64, **SMALL)
    first, again, other = _hashes(suite), _hashes(tmp_path / "again"), _hashes(tmp_path / "other")
    assert first == again
    assert first.keys() == other.keys()
    changed = [k for k in first if first[k] != other[k]]
    assert "train.json" in changed and len(changed) > 0.9 * len(first)


def test_cli_is_deterministic_across_processes_and_hash_seeds(tmp_path):
    args = ["--seed", "3", "--per-task", "1", "--eval-per-task", "6", "--mme-images", "1", "--stage1-size", "2",
            "--quiet"]
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        done = subprocess.run([sys.executable, str(REPO / "data" / "make_synthetic.py"), "--out",
                               str(tmp_path / name), *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")


def test_cli_rejects_bad_arguments_and_protects_existing_folders(tmp_path):
    cli = [sys.executable, str(REPO / "data" / "make_synthetic.py")]
    bad = subprocess.run(cli + ["--out", str(tmp_path / "x"), "--image-size", "10"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "image_size=10" in bad.stderr and "[48, 512]" in bad.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    small = ["--out", str(busy), "--per-task", "1", "--eval-per-task", "6", "--mme-images", "1", "--stage1-size",
             "1", "--quiet"]
    refused = subprocess.run(cli + small, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "not empty" in refused.stderr and "--overwrite" in refused.stderr
    done = subprocess.run(cli + small + ["--overwrite"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (busy / "keep.txt").read_text() == "mine" and (busy / "train.json").exists()


def test_generate_suite_validates_sizes(tmp_path):
    with pytest.raises(ValueError, match="eval_per_task=5"):
        synthetic.generate_suite(tmp_path / "y", eval_per_task=5, progress=False)
    with pytest.raises(ValueError, match="per_task=0"):
        synthetic.generate_suite(tmp_path / "y", per_task=0, progress=False)


# ---------------------------------------------------------------------------------------------------- train.json


def test_train_records_follow_the_vision_flan_format(suite, train):
    assert isinstance(train, list) and len(train) == 12 * len({r["task_name"] for r in train})
    for r in train:
        assert set(r) == {"id", "image", "task_name", "conversations"}
        assert re.fullmatch(r"[A-Za-z0-9]+\+[a-z0-9_]+", r["task_name"])
        assert r["id"].startswith(f"synth_{r['task_name']}+")
        human, gpt = r["conversations"]
        assert len(r["conversations"]) == 2 and human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].endswith("\n<image>") and human["value"].count("<image>") == 1
        assert gpt["value"].strip() and "<image>" not in gpt["value"]
        assert (suite / "images" / r["image"]).is_file()
    assert len({r["task_name"] for r in train}) >= 24
    # Keyed by (task_name, image) records are unique; ids repeat within tasks, as in Vision-Flan.
    assert len({(r["task_name"], r["image"]) for r in train}) == len(train)
    assert len({r["id"] for r in train}) < len(train)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{[a-z]+\}", template)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$")


def test_every_task_uses_at_least_three_of_its_phrasings(train):
    by_task = collections.defaultdict(set)
    tasks = {t.name: t for t in synthetic.TRAIN_TASKS}
    for r in train:
        instruction = r["conversations"][0]["value"].removesuffix("\n<image>").split("\nOptions: ")[0]
        matches = [i for i, t in enumerate(tasks[r["task_name"]].phrasings) if _template_regex(t).match(instruction)]
        assert matches, f"{r['task_name']}: {instruction!r} matches none of its phrasings"
        by_task[r["task_name"]].add(matches[0])
    assert all(len(v) >= 3 for v in by_task.values()), by_task


def test_inline_options_agree_with_the_answer_letter(train):
    with_options = 0
    for r in train:
        human, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        if "\nOptions: " not in human:
            assert not re.match(r"\([a-z]\) ", answer)
            continue
        with_options += 1
        line = human.removesuffix("\n<image>").split("\nOptions: ")[1]
        pairs = re.findall(r"\(([a-z])\) (.+?)(?= \([a-z]\) |$)", line)
        letters = [p[0] for p in pairs]
        assert letters == list("abcdefghij"[:len(letters)]) and len(letters) >= 2
        m = re.fullmatch(r"\(([a-z])\) (.+)", answer)
        assert m, f"option-style task answered {answer!r}"
        assert dict(pairs)[m.group(1)] == m.group(2)
    assert with_options >= 7 * 12


def test_conflicting_answer_formats_about_the_same_property(train):
    """Colour and count are each asked by several tasks with different answer formats (task interference)."""
    answers = collections.defaultdict(list)
    for r in train:
        answers[r["task_name"]].append(r["conversations"][1]["value"])
    assert all(re.fullmatch(r"\([a-d]\) [a-z]+", a) for a in answers["SynthShapes+color_classification"])
    assert all(a in ANCHORS for a in answers["SynthShapes+color_name"])
    assert set(answers["SynthShapes+color_verification"]) <= {"Yes", "No"}
    assert all(a.isdigit() for a in answers["SynthCount+count_digits"])
    assert all(a in NUMBER_WORDS for a in answers["SynthCount+count_words"])


# ---------------------------------------------------------------------------------------------------- ground truth


def _records(train, task):
    return [r for r in train if r["task_name"] == task]


def test_colour_answers_match_the_rendered_pixels(suite, train):
    checked = 0
    for task in ("SynthShapes+color_name", "SynthShapes+color_classification", "SynthGlyphs+text_color"):
        for r in _records(train, task):
            a = _pixels(suite / "images" / r["image"])
            if not _plain(a):  # textured backgrounds add texture colours
                continue
            colour = r["conversations"][1]["value"].split(") ")[-1]
            assert _foreground_colors(a) == [colour], (r["image"], colour)
            checked += 1
    for r in _records(train, "SynthShapes+color_verification"):
        a = _pixels(suite / "images" / r["image"])
        if _plain(a):
            asked = re.search(r" (\w+)\?$", r["conversations"][0]["value"].removesuffix("\n<image>")).group(1)
            assert (_foreground_colors(a) == [asked]) == (r["conversations"][1]["value"] == "Yes")
            checked += 1
    assert checked >= 20


def test_colour_at_the_centre_of_a_rendered_shape():
    """Render a known scene: the pixel at each shape's centre has the colour named for it."""
    import random
    rng = random.Random(5)
    for kind in synthetic.SHAPES:
        if kind == "ring":
            continue
        for color in ("red", "blue", "yellow", "brown"):
            scene, obj = synthetic.single_object(rng, 64, shape=kind, color=color, bg="light gray")
            a = np.asarray(synthetic.render(scene))
            assert _nearest_anchor(a[round(obj.cy), round(obj.cx)]) == color
            assert a.shape == (64, 64, 3) and tuple(a[0, 0]) != tuple(a[round(obj.cy), round(obj.cx)])


def test_count_answers_equal_connected_components(suite, train):
    for task in ("SynthCount+count_digits", "SynthCount+count_words", "SynthCount+count_options"):
        for r in _records(train, task):
            a = _pixels(suite / "images" / r["image"])
            assert _plain(a)
            answer = r["conversations"][1]["value"].split(") ")[-1]
            expected = int(answer) if answer.isdigit() else NUMBER_WORDS[answer]
            foreground = np.any(a != a[0, 0], axis=-1)
            assert _components(foreground) == expected, r["image"]


def test_position_answers_match_the_object_centroid(suite, train):
    checked = 0
    for task in ("SynthSpatial+position_name", "SynthSpatial+position_classification"):
        for r in _records(train, task):
            a = _pixels(suite / "images" / r["image"])
            if not _plain(a):
                continue
            x, y = _centroid(np.any(a != a[0, 0], axis=-1))
            third = a.shape[0] / 3
            region = ("left" if x < third else "right" if x > 2 * third else
                      "top" if y < third else "bottom" if y > 2 * third else "center")
            assert region == r["conversations"][1]["value"].split(") ")[-1], r["image"]
            checked += 1
    assert checked >= 8


def test_size_labels_are_ordered_by_rendered_extent(suite, train):
    extents = collections.defaultdict(list)
    for r in _records(train, "SynthShapes+size_classification"):
        a = _pixels(suite / "images" / r["image"])
        if _plain(a):
            extents[r["conversations"][1]["value"]].append(_extent(np.any(a != a[0, 0], axis=-1)))
    assert len(extents) >= 2
    order = [s for s in ("small", "medium", "large") if s in extents]
    for lo, hi in zip(order, order[1:]):
        assert max(extents[lo]) < min(extents[hi]), extents


def test_relation_answers_match_the_object_centroids(suite, train):
    sides = {"on the left": "left", "on the right": "right", "higher": "above", "lower": "below"}
    checked = 0
    for r in _records(train, "SynthSpatial+relation_which"):
        a = _pixels(suite / "images" / r["image"])
        if not _plain(a):
            continue
        checked += 1
        human = r["conversations"][0]["value"]
        side = next(v for k, v in sides.items() if k in human)
        x, y = re.findall(r"the (\w+) \w+", human.split(",", 1)[-1] if "Which shape" in human else human)[:2]
        winner = r["conversations"][1]["value"].split()[1]
        loser = y if winner == x else x
        assert _holds(side, _centroid(_object_mask(a, winner)), _centroid(_object_mask(a, loser))), r["image"]
    for r in _records(train, "SynthSpatial+relation_sentence"):
        a = _pixels(suite / "images" / r["image"])
        if not _plain(a):
            continue
        checked += 1
        m = re.fullmatch(r"The (\w+) \w+ is (to the left of|to the right of|above|below) the (\w+) \w+\.",
                         r["conversations"][1]["value"])
        rel = {"to the left of": "left", "to the right of": "right"}.get(m.group(2), m.group(2))
        assert _holds(rel, _centroid(_object_mask(a, m.group(1))), _centroid(_object_mask(a, m.group(3))))
    assert checked >= 8


def test_object_listing_is_left_to_right_and_complete(suite, train):
    for r in _records(train, "SynthObjects+object_listing"):
        a = _pixels(suite / "images" / r["image"])
        if _plain(a):
            assert _components(np.any(a != a[0, 0], axis=-1)) == len(r["conversations"][1]["value"].split(", "))


# ---------------------------------------------------------------------------------------------------- stage 1


def test_stage1_records_use_the_plain_template(suite):
    records = json.loads((suite / "stage1.json").read_text())
    assert len(records) == 12 and len({r["id"] for r in records}) == 12
    for r in records:
        human, gpt = r["conversations"]
        assert human == {"from": "human", "value": "<image>"} and gpt["from"] == "gpt" and gpt["value"].strip()
        assert (suite / "images" / r["image"]).is_file()


# ---------------------------------------------------------------------------------------------------- images, vocabulary


def test_every_image_decodes_at_the_requested_size(suite, tmp_path):
    other = tmp_path / "s96"
    synthetic.generate_suite(other, seed=2, image_size=96, per_task=1, eval_per_task=6, mme_images=1,
                             stage1_size=3, progress=False)
    for root, side in ((suite, 64), (other, 96)):
        pngs = sorted(root.rglob("*.png"))
        assert len(pngs) > 30
        for p in pngs:
            with Image.open(p) as im:
                im.load()
                assert im.size == (side, side) and im.mode == "RGB", p


def test_vocabulary_stays_small(suite, train):
    texts = [c["value"] for r in train for c in r["conversations"]]
    texts += [c["value"] for r in json.loads((suite / "stage1.json").read_text()) for c in r["conversations"]]
    for path in (suite / "eval").rglob("*.jsonl"):
        for r in _jsonl(path):
            texts += [r.get("prompt", ""), str(r.get("target", "")), " ".join(r.get("answers", []))]
    words = {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}
    assert len(words) < 600, len(words)


@pytest.mark.slow
def test_default_sizes(tmp_path):
    m = synthetic.generate_suite(tmp_path / "full", seed=0, progress=False)
    assert len(m["train"]["tasks"]) >= 24 and m["train"]["records"] == 150 * len(m["train"]["tasks"])
    assert all(sub["questions"] == 60 for sub in m["eval"]["mme"]["subtasks"].values())
    assert m["eval"]["pope"]["records"]["random"] == 150
    total = sum(p.stat().st_size for p in (tmp_path / "full").rglob("*") if p.is_file())
    assert total < 40e6, total


# ---------------------------------------------------------------------------------------------------- task definitions


def test_task_definitions_cover_training_tasks_and_held_out_sets(suite, train, tmp_path):
    table = json.loads((suite / "task_definitions.json").read_text())
    train_names = [r["task_name"] for r in train]
    mme = sorted(p.name for p in (suite / "eval/mme").iterdir())
    cvbench = sorted({r["task"] for r in _jsonl(suite / "eval/cvbench/test.jsonl")})
    # eval/seen holds training tasks: its records use their training task's definition (looked up by group)
    simple = sorted(p.name for p in (suite / "eval").iterdir()
                    if (p / "test.jsonl").is_file() and p.name not in ("cvbench", "seen"))
    assert cvbench == ["Count", "Depth", "Distance", "Relation"] and len(mme) == 7 and len(simple) == 6
    expected = (list(dict.fromkeys(train_names)) + [f"mme/{s}" for s in mme] + [f"cvbench/{t}" for t in cvbench]
                + simple + ["pope"])
    assert sorted(table) == sorted(expected) and len(table) == 28 + 7 + 4 + 6 + 1
    assert list(table)[:28] == list(dict.fromkeys(train_names))  # training tasks first, in train.json order
    texts = list(table.values())
    assert len(set(texts)) == len(texts)  # one definition per task, none copied
    for key, text in table.items():
        words = len(text.split())
        assert 8 <= words <= 60 and text[0].isupper() and text.rstrip("'").endswith((".", "?")), (key, text)
    # A yes/no task's definition asks for the answers in the case its records use.
    for name in dict.fromkeys(train_names):
        answers = {r["conversations"][1]["value"] for r in train if r["task_name"] == name}
        if answers <= {"Yes", "No"}:
            assert "'Yes' or 'No'" in table[name], name
        elif answers <= {"yes", "no"}:
            assert "'yes' or 'no' in lower case" in table[name], name
    m = json.loads((suite / "manifest.json").read_text())
    assert m["task_definitions"] == {"path": "task_definitions.json", "training_tasks": 28, "eval_keys": 18}
    # The texts depend on no seed or size.
    synthetic.generate_suite(tmp_path / "s1", seed=1, image_size=48, per_task=1, eval_per_task=6, mme_images=1,
                             stage1_size=0, progress=False)
    assert (tmp_path / "s1/task_definitions.json").read_bytes() == (suite / "task_definitions.json").read_bytes()


def test_only_definitions_adds_the_file_to_an_existing_suite(suite, tmp_path):
    cli = [sys.executable, str(REPO / "data" / "make_synthetic.py")]
    old = tmp_path / "old"
    old.mkdir()
    (old / "train.json").write_text((suite / "train.json").read_text())  # a suite from before the file existed
    done = subprocess.run(cli + ["--out", str(old), "--only-definitions"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (old / "task_definitions.json").read_bytes() == (suite / "task_definitions.json").read_bytes()
    assert sorted(p.name for p in old.iterdir()) == ["task_definitions.json", "train.json"]
    refused = subprocess.run(cli + ["--out", str(tmp_path / "empty"), "--only-definitions"], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "holds no train.json" in refused.stderr
