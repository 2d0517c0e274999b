"""Tests of the interference testbed generator (mixlora/data/testbed/).

The references are independent of the generator's task code: every answer is recomputed from the pixels of the
image file (via the pixel reader, itself checked against rendered scenes and raw pixel arrays) with the mappings
written out by hand below, and the verify question's named value is parsed from the prompt text.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixlora.data.dataset import parse_record
from mixlora.data.testbed import FAMILIES, TASKS, make_testbed, read_attributes, render
from mixlora.data.testbed.render import sample_scene
from mixlora.data.testbed.templates import UNSEEN_TEMPLATES
from mixlora.data.testbed.vocab import check_image_size

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ALL_TASKS = [f"{family}_{kind}" for family in ("colour", "size", "position")
             for kind in ("name", "next", "flip", "verify")]
# The module's builds hold all twelve tasks (not only the default six), so every mapping is checked.
SMALL = dict(train_images=60, test_images=40, train_per_task=20, test_per_task=12, stage1_size=30, tasks=ALL_TASKS)
SMALL_CLI = ["--train-images", "60", "--test-images", "40", "--train-per-task", "20", "--test-per-task", "12",
             "--stage1-size", "30", "--tasks", ",".join(ALL_TASKS)]
BACKGROUND = (90, 90, 90)

# The task definitions, written out by hand (not imported).
VALUES = {"colour": ("red", "green", "blue", "yellow"), "size": ("small", "medium", "large"),
          "position": ("top left", "top right", "bottom left", "bottom right")}
NEXT = {
    "colour": {"red": "green", "green": "blue", "blue": "yellow", "yellow": "red"},
    "size": {"small": "medium", "medium": "large", "large": "small"},
    "position": {"top left": "top right", "top right": "bottom right", "bottom right": "bottom left",
                 "bottom left": "top left"},
}
FLIP = {
    "colour": {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green"},
    "size": {"small": "large", "large": "small", "medium": "medium"},
    "position": {"top left": "top right", "top right": "top left", "bottom left": "bottom right",
                 "bottom right": "bottom left"},
}
TASK_NAMES = [f"testbed+{family}_{kind}" for family in VALUES for kind in ("name", "next", "flip", "verify")]


# ---------------------------------------------------------------------------------------------------- helpers

def mentioned(family: str, text: str) -> list[str]:
    """The family's values named in ``text`` as whole words ("coloured" does not name "red")."""
    return [value for value in VALUES[family] if re.search(rf"\b{value}\b", text)]


def expected_answer(task_name: str, attributes: dict, prompt: str) -> str:
    family, kind = task_name.split("+")[1].split("_")
    value = attributes[family]
    if kind == "name":
        return value
    if kind == "next":
        return NEXT[family][value]
    if kind == "flip":
        return FLIP[family][value]
    named = mentioned(family, prompt)
    assert len(named) == 1, f"verify prompt must name exactly one {family}: {prompt!r}"
    return "yes" if named[0] == value else "no"


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load(out: Path):
    stage1 = json.loads((out / "stage1.json").read_text())
    train = json.loads((out / "train.json").read_text())
    seen = [json.loads(line) for line in (out / "eval/seen/test.jsonl").read_text().splitlines()]
    unseen = [json.loads(line) for line in (out / "eval/unseen/test.jsonl").read_text().splitlines()]
    return stage1, train, seen, unseen


def pixels_attributes(cache: dict, path: Path) -> dict:
    if path not in cache:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (64, 64)
            cache[path] = read_attributes(image)
    return cache[path]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed")
    manifest = make_testbed(out, seed=0, progress=False, **SMALL)
    return out, manifest


# ---------------------------------------------------------------------------------------------------- pixels

def test_read_attributes_matches_rendered_scenes():
    rng = random.Random("test/render")
    counts = Counter()
    for _ in range(300):
        scene = sample_scene(rng, 64)
        image = render(scene, 64)
        assert read_attributes(image) == scene.attributes
        counts[scene.size, scene.shape] += 1
        # Independent pixel check: one exact colour on the background, inside its quadrant with a 1 px margin.
        array = np.asarray(image)
        mask = (array != BACKGROUND).any(axis=2)
        assert len({tuple(p) for p in array[mask]}) == 1
        ys, xs = np.nonzero(mask)
        x_lo = 32 if scene.position.endswith("right") else 0
        y_lo = 32 if scene.position.startswith("bottom") else 0
        assert x_lo + 1 <= xs.min() and xs.max() <= x_lo + 30, scene
        assert y_lo + 1 <= ys.min() and ys.max() <= y_lo + 30, scene
    assert len(counts) == 6  # every size with both shapes


@pytest.mark.parametrize("image_size", [32, 96, 128])
def test_read_attributes_other_image_sizes(image_size):
    rng = random.Random(f"test/size{image_size}")
    for _ in range(40):
        scene = sample_scene(rng, image_size)
        assert read_attributes(render(scene, image_size)) == scene.attributes


def test_read_attributes_refuses_images_without_one_palette_object():
    with pytest.raises(ValueError, match="no object"):
        read_attributes(Image.new("RGB", (64, 64), BACKGROUND))
    image = Image.new("RGB", (64, 64), BACKGROUND)
    image.putpixel((3, 3), (1, 2, 3))
    with pytest.raises(ValueError, match="palette"):
        read_attributes(image)


@pytest.mark.parametrize("bad", [63, 30, 1024, True, "64"])
def test_bad_image_size(bad):
    with pytest.raises(ValueError, match="image_size"):
        check_image_size(bad)


# ---------------------------------------------------------------------------------------------------- records

def test_tasks_and_families():
    assert FAMILIES == ("colour", "size", "position")
    assert [task.task_name for task in TASKS] == TASK_NAMES
    for task in TASKS:
        assert len(task.train_templates) == 4 and len(task.unseen_templates) == 2


def test_every_answer_matches_the_pixels(built):
    out, _ = built
    stage1, train, seen, unseen = load(out)
    cache = {}
    for record in train:
        attributes = pixels_attributes(cache, out / "images" / record["image"])
        prompt, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        assert answer == expected_answer(record["task_name"], attributes, prompt), record
    for split_dir, rows in (("seen", seen), ("unseen", unseen)):
        for row in rows:
            path = out / "eval" / split_dir / row["image_path"]
            assert path.exists(), row
            attributes = pixels_attributes(cache, path)
            assert row["target"] == expected_answer(row["task_name"], attributes, row["prompt"]), row
            assert row["family"] == row["task_name"].split("+")[1].split("_")[0]
    for record in stage1:
        attributes = pixels_attributes(cache, out / "images" / record["image"])
        caption = record["conversations"][1]["value"]
        for family in VALUES:
            assert mentioned(family, caption) == [attributes[family]], caption
        assert not re.search(r"\b(next|after|opposite|mirror|yes|no)\b", caption), caption
    answers = [r["conversations"][1]["value"] for r in train] + [r["target"] for r in seen]
    for answer in answers:
        assert answer == answer.lower() and not answer.endswith(".") and 1 <= len(answer.split()) <= 2


def test_records_parse_as_vision_flan(built):
    out, _ = built
    stage1, train, _, _ = load(out)
    for record in stage1 + train:
        task_name, image, turns = parse_record(record, default_task_name=None)
        assert (out / "images" / image).exists()
        assert image.startswith("train/")
        assert turns[0][1].endswith("\n<image>") and len(turns) == 2
    assert {r["task_name"] for r in stage1} == {"testbed+caption"}
    assert [r["id"] for r in stage1] == [f"stage1-{i:05d}" for i in range(SMALL["stage1_size"])]


def test_split_sizes_and_verify_balance(built):
    out, manifest = built
    stage1, train, seen, unseen = load(out)
    assert len(stage1) == SMALL["stage1_size"]
    assert Counter(r["task_name"] for r in train) == {name: SMALL["train_per_task"] for name in TASK_NAMES}
    for rows in (seen, unseen):
        assert Counter(r["task_name"] for r in rows) == {name: SMALL["test_per_task"] for name in TASK_NAMES}
        assert len({r["unique_id"] for r in rows}) == len(rows)
    for family in VALUES:
        name = f"testbed+{family}_verify"
        for answers in ([r["conversations"][1]["value"] for r in train if r["task_name"] == name],
                        [r["target"] for r in seen if r["task_name"] == name],
                        [r["target"] for r in unseen if r["task_name"] == name]):
            counts = Counter(answers)
            assert set(counts) == {"yes", "no"} and abs(counts["yes"] - counts["no"]) <= 1
    assert manifest["records"] == {"stage1": 30, "train": 240, "seen": 144, "unseen": 144}
    assert [t["task_name"] for t in manifest["tasks"]] == TASK_NAMES


def test_seen_and_unseen_pair_up(built):
    out, _ = built
    _, _, seen, unseen = load(out)
    assert len(seen) == len(unseen)
    for a, b in zip(seen, unseen):
        assert (a["task_name"], a["image_path"], a["target"]) == (b["task_name"], b["image_path"], b["target"])
        assert a["prompt"] != b["prompt"]
        family = a["family"]
        if a["task_name"].endswith("_verify"):
            assert mentioned(family, a["prompt"]) == mentioned(family, b["prompt"])


def test_unseen_phrasings_never_trained(built):
    out, _ = built
    stage1, train, seen, unseen = load(out)
    trained = [r["conversations"][0]["value"] for r in train + stage1]
    trained_set = {text.removesuffix("\n<image>") for text in trained}
    assert not trained_set & {r["prompt"] for r in unseen}
    # Seen prompts use the training wording (verify prompts up to the named value, as small builds do not
    # pair every wording with every value).
    def wording(text):
        for family in VALUES:
            for value in VALUES[family]:
                text = re.sub(rf"\b{value}\b", "<value>", text) if "Answer yes or no" in text else text
        return text
    assert {wording(r["prompt"]) for r in seen} <= {wording(t) for t in trained_set}
    everything = "\n".join(trained)
    for name, templates in UNSEEN_TEMPLATES.items():
        family = name.split("_")[0]
        for template in templates:
            for value in VALUES[family]:
                assert template.format(value=value) not in everything
    # Tasks of one family are told apart by their wording: no training prompt is shared between tasks.
    owners = {}
    for record in train:
        owners.setdefault(record["conversations"][0]["value"], set()).add(record["task_name"])
    assert all(len(tasks) == 1 for tasks in owners.values())


def test_image_pools_disjoint(built):
    out, _ = built
    train = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "images/train").glob("*.png")}
    test = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "images/test").glob("*.png")}
    assert len(list((out / "images/train").glob("*.png"))) == SMALL["train_images"]
    assert len(list((out / "images/test").glob("*.png"))) == SMALL["test_images"]
    assert not train & test


# ---------------------------------------------------------------------------------------------------- builds

def test_same_arguments_same_bytes_different_seed_different_images(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    make_testbed(again, seed=0, progress=False, **SMALL)
    assert file_hashes(again) == file_hashes(out)
    other = tmp_path / "other"
    make_testbed(other, seed=1, progress=False, **SMALL)
    images = lambda root: {k: v for k, v in file_hashes(root).items() if k.startswith("images")}  # noqa: E731
    assert images(other) != images(out)


def test_idempotent_refuse_and_overwrite(tmp_path):
    out = tmp_path / "tb"
    first = make_testbed(out, progress=False, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert make_testbed(out, progress=False, **SMALL) == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_testbed(out, progress=False, **{**SMALL, "train_per_task": 21})
    (out / "notes.txt").write_text("keep me")
    second = make_testbed(out, progress=False, overwrite=True, **{**SMALL, "train_per_task": 21})
    assert (out / "notes.txt").read_text() == "keep me"
    assert second["sizes"]["train_per_task"] == 21 and second["records"]["train"] == 12 * 21
    # An interrupted build (no manifest) is not taken for a complete one.
    (out / "manifest.json").unlink()
    with pytest.raises(FileExistsError, match="incomplete"):
        make_testbed(out, progress=False, **SMALL)


@pytest.mark.parametrize("bad", [{"test_per_task": 0}, {"train_images": -1}, {"stage1_size": 2.5},
                                 {"image_size": 63}, {"seed": "0"}, {"tasks": []}, {"tasks": ["colour_hue"]},
                                 {"tasks": ["colour_name", "colour_name"]}])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        make_testbed(tmp_path / "x", progress=False, **{**SMALL, **bad})
    assert not (tmp_path / "x").exists()


def test_default_build_holds_colour_and_position_and_each_task_is_independent_of_the_others(built, tmp_path):
    out, _ = built
    small = {k: v for k, v in SMALL.items() if k != "tasks"}
    manifest = make_testbed(tmp_path / "default", progress=False, **small)
    default = ["colour_name", "colour_next", "colour_flip", "position_name", "position_next", "position_flip"]
    assert manifest["arguments"]["tasks"] == default
    assert [t["task_name"] for t in manifest["tasks"]] == [f"testbed+{name}" for name in default]
    _, train_all, seen_all, _ = load(out)
    _, train, seen, _ = load(tmp_path / "default")
    assert {r["task_name"] for r in train} == {f"testbed+{name}" for name in default}
    # A task's records (image, prompt, answer) are the same whichever other tasks are built beside it.
    content = lambda rows: [(r["image"], r["conversations"][0]["value"], r["conversations"][1]["value"])  # noqa: E731
                            for r in rows if r["task_name"] == "testbed+position_next"]
    assert content(train) == content(train_all) and len(content(train)) == SMALL["train_per_task"]
    test_content = lambda rows: [(r["image_path"], r["prompt"], r["target"])  # noqa: E731
                                 for r in rows if r["task_name"] == "testbed+colour_flip"]
    assert test_content(seen) == test_content(seen_all)


# ---------------------------------------------------------------------------------------------------- CLI

def run_cli(*args):
    # Another hash seed: the files must not depend on PYTHONHASHSEED.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    return subprocess.run([PYTHON, "-m", "mixlora.data.testbed", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_builds_the_same_files(built, tmp_path):
    out, _ = built
    result = run_cli("--out", str(tmp_path / "cli"), *SMALL_CLI, "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "manifest.json").exists()
    assert file_hashes(tmp_path / "cli") == file_hashes(out)


@pytest.mark.parametrize("bad", [["--test-per-task", "0"], ["--image-size", "63"], ["--train-images", "many"],
                                 ["--tasks", "colour_name,shape_name"]])
def test_cli_bad_argument_exits_2(tmp_path, bad):
    result = run_cli("--out", str(tmp_path / "cli"), *bad, "--quiet")
    assert result.returncode == 2
    assert "error" in result.stderr
    assert not (tmp_path / "cli").exists()
