"""Tests of on-demand suite generation (mixlora/data/synthetic/ensure.py) and of its three callers: eval.py's
``ensure_synthetic_suite``, training's ``ensure_synthetic`` and the analyses' ``ensure_synthetic_suite``.

What must hold: a missing suite is built; a finished one is not touched (same inodes and mtimes); a folder holding
anything else is refused with a clear error and left byte for byte as it was; concurrent callers and a killed build
never leave a folder at the suite's path that is not a finished suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mixlora.data import synthetic
from mixlora.data.synthetic import IncompleteSuiteError, ensure_suite, generate_suite, suite_problem

TINY = dict(per_task=1, eval_per_task=6, mme_images=1, stage1_size=0, seen_per_task=1, progress=False)


def _snapshot(root: Path) -> dict[str, tuple]:
    """(inode, mtime_ns, sha256 or None for folders) of root and everything under it."""
    paths = [root, *sorted(root.rglob("*"))]
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in paths}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """File hashes of the suite that generate_suite itself writes for TINY (what ensure_suite must publish)."""
    out = tmp_path_factory.mktemp("ref") / "suite"
    generate_suite(out, seed=0, **TINY)
    return _hashes(out)


# ------------------------------------------------------------------------------------------------ missing -> built


def test_missing_suite_is_built_in_place_with_default_permissions(tmp_path, reference):
    root = tmp_path / "a" / "b" / "suite"  # parents absent too
    assert ensure_suite(root, seed=0, **TINY) is True
    assert _hashes(root) == reference
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["generator"] == "mixlora.data.synthetic" and suite_problem(root) is None
    assert len(json.loads((root / "train.json").read_text())) == 28  # 28 training tasks x per_task=1
    assert os.listdir(root.parent) == ["suite"]  # no temporary folder left behind
    plain = tmp_path / "plain"
    plain.mkdir()  # a folder made with the process's umask: the suite must not be private (mkdtemp's 0700)
    assert stat.S_IMODE(root.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_an_empty_folder_is_filled(tmp_path, reference):
    root = tmp_path / "suite"
    root.mkdir()
    assert ensure_suite(root, seed=0, **TINY) is True
    assert _hashes(root) == reference and os.listdir(tmp_path) == ["suite"]


def test_a_linked_empty_folder_is_filled_through_the_link(tmp_path, reference):
    storage = tmp_path / "scratch" / "suite"
    storage.mkdir(parents=True)
    link = tmp_path / "data" / "synthetic"
    link.parent.mkdir()
    link.symlink_to(storage, target_is_directory=True)
    assert ensure_suite(link, seed=0, **TINY) is True
    assert link.is_symlink() and link.resolve() == storage.resolve()  # the user's link is kept
    assert _hashes(storage) == reference and os.listdir(storage.parent) == ["suite"]


# ------------------------------------------------------------------------------------------------ present -> untouched


def test_a_finished_suite_is_left_untouched(tmp_path):
    root = tmp_path / "suite"
    generate_suite(root, seed=0, **TINY)
    before = _snapshot(root)
    # Other sizes and another seed: a finished suite is kept as it is, not rebuilt to match.
    assert ensure_suite(root, seed=7, per_task=2, eval_per_task=12, progress=False) is False
    assert _snapshot(root) == before
    assert os.listdir(tmp_path) == ["suite"]


# ------------------------------------------------------------------------------------------- refused, nothing deleted


def _write_user_folder(root: Path, kind: str) -> None:
    root.mkdir()
    if kind == "user file":
        (root / "notes.txt").write_text("mine")
    elif kind == "interrupted build":  # what generate_suite leaves when killed: files, no manifest yet
        (root / "train.json").write_text("[]\n")
        (root / "images" / "SynthShapes+color_name").mkdir(parents=True)
        (root / "images" / "SynthShapes+color_name" / "00000.png").write_bytes(b"\x89PNG partial")
    elif kind == "foreign manifest":
        (root / "manifest.json").write_text(json.dumps({"name": "my own dataset", "version": 3}))
        (root / "data.csv").write_text("a,b\n1,2\n")
    elif kind == "broken manifest":
        (root / "manifest.json").write_text('{"generator": "mixlora.data.synth')


@pytest.mark.parametrize("kind, message", [
    ("user file", "holds no manifest.json"),
    ("interrupted build", "holds no manifest.json"),
    ("foreign manifest", "a manifest.json that is not the synthetic suite's (generator None"),
    ("broken manifest", "holds a manifest.json that cannot be read as JSON"),
])
def test_an_incomplete_or_foreign_folder_is_refused_and_kept(tmp_path, kind, message):
    root = tmp_path / "suite"
    _write_user_folder(root, kind)
    before = _snapshot(root)
    with pytest.raises(IncompleteSuiteError, match=r"nothing in it was changed") as err:
        ensure_suite(root, seed=0, **TINY)
    assert message in str(err.value) and "--overwrite" in str(err.value)
    assert isinstance(err.value, FileExistsError)  # what eval.py reports as a one-line error (exit 2)
    assert _snapshot(root) == before
    assert os.listdir(tmp_path) == ["suite"]  # refused before any temporary folder was made


def test_a_file_at_the_suite_path_is_refused_and_kept(tmp_path):
    root = tmp_path / "suite"
    root.write_text("not a folder")
    with pytest.raises(IncompleteSuiteError, match="is not a folder"):
        ensure_suite(root, seed=0, **TINY)
    assert root.read_text() == "not a folder" and os.listdir(tmp_path) == ["suite"]


# ------------------------------------------------------------------------------------------------ races, kills


def test_concurrent_callers_publish_one_suite(tmp_path, monkeypatch, reference):
    """Both callers find the folder missing and build; neither publishes until both have built, so the second
    rename meets the first one's finished suite and must keep it."""
    from mixlora.data.synthetic import ensure

    both_built = threading.Barrier(2, timeout=120)

    def build_then_wait(out, **kwargs):
        generate_suite(out, **kwargs)
        both_built.wait()

    monkeypatch.setattr(ensure, "generate_suite", build_then_wait)
    root = tmp_path / "suite"
    results, errors = [], []

    def call():
        try:
            results.append(ensure_suite(root, seed=0, **TINY))
        except BaseException as err:  # re-raised below in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    if errors:
        raise errors[0]
    assert sorted(results) == [False, True]
    assert _hashes(root) == reference
    assert os.listdir(tmp_path) == ["suite"]  # the loser's copy was deleted


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    from mixlora.data.synthetic import ensure

    def interrupted(out, **kwargs):
        (Path(out) / "train.json").write_text("[]\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(ensure, "generate_suite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_suite(tmp_path / "suite", seed=0, **TINY)
    assert os.listdir(tmp_path) == []


KILLED_AFTER_BUILD = r"""
import os, signal, sys
from mixlora.data.synthetic import ensure

real = ensure.generate_suite

def build_then_die(out, **kwargs):  # the worst moment: a finished build that is not yet renamed into place
    real(out, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

ensure.generate_suite = build_then_die
ensure.ensure_suite(sys.argv[1], seed=0, per_task=1, eval_per_task=6, mme_images=1, stage1_size=0, seen_per_task=1,
                    progress=False)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_build_never_leaves_a_suite_folder(tmp_path, reference):
    root = tmp_path / "suite"
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_BUILD, str(root)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not root.exists()
    leftovers = os.listdir(tmp_path)  # only the hidden build folder, which a later call neither uses nor needs
    assert len(leftovers) == 1 and leftovers[0].startswith(".suite.tmp-")
    assert ensure_suite(root, seed=0, **TINY) is True
    assert _hashes(root) == reference
    assert sorted(os.listdir(tmp_path)) == sorted(leftovers + ["suite"])


# ------------------------------------------------------------------------------------------------ the three callers


def test_training_reports_a_refused_folder_as_a_config_error(tmp_path):
    from mixlora.train.data import ensure_synthetic
    from mixlora.train.settings import ConfigError, DataSettings

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    data = DataSettings(annotations=str(busy / "train.json"), image_folder=None, generate={"seed": 0, **TINY})
    with pytest.raises(ConfigError, match=r"data.annotations=.*is missing, and the synthetic suite cannot be "
                                          r"generated there: .*holds no manifest.json"):
        ensure_synthetic(data)
    assert os.listdir(busy) == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    # A name the suite does not write is refused before anything is built.
    other = DataSettings(annotations=str(tmp_path / "new" / "captions.json"), image_folder=None,
                         generate={"seed": 0, **TINY})
    with pytest.raises(ConfigError, match="must name its train.json"):
        ensure_synthetic(other)
    assert not (tmp_path / "new").exists()
    off = DataSettings(annotations=str(tmp_path / "off" / "train.json"), image_folder=None)  # generate=null
    assert ensure_synthetic(off) is None
    assert not (tmp_path / "off").exists()


def test_training_generates_into_the_annotations_folder(tmp_path, reference):
    from mixlora.train.data import ensure_synthetic
    from mixlora.train.settings import DataSettings

    data = DataSettings(annotations=str(tmp_path / "suite" / "train.json"), image_folder=None,
                        generate={"seed": 0, **TINY})
    assert ensure_synthetic(data) == tmp_path / "suite"
    assert _hashes(tmp_path / "suite") == reference
    assert ensure_synthetic(data) is None  # the file exists now


def test_analysis_reports_a_refused_folder_as_a_missing_file(tmp_path):
    from mixlora.analysis import ensure_synthetic_suite

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FileNotFoundError, match=r"train.json does not exist; pass an existing Vision-Flan JSON .*"
                                                r"holds no manifest.json"):
        ensure_synthetic_suite(busy / "train.json")
    assert os.listdir(busy) == ["keep.txt"]
    with pytest.raises(FileNotFoundError, match="generated automatically only for DIR/train.json"):
        ensure_synthetic_suite(tmp_path / "elsewhere" / "records.json")
    assert sorted(os.listdir(tmp_path)) == ["busy"]


def test_the_package_still_exports_the_generators_names():
    # The split into modules keeps every public name of the former single module importable from the package.
    for name in ("generate_suite", "write_task_definitions", "TRAIN_TASKS", "TASK_DEFINITIONS", "EVAL_INFO", "render",
                 "single_object", "pope_negatives", "PLAIN_BACKGROUNDS", "SHAPES", "lettered", "_rng", "_save",
                 "_write_jsonl", "ensure_suite", "SIMPLE_SETS", "CVBENCH_TASKS", "MME_SUBTASKS"):
        assert hasattr(synthetic, name), name
