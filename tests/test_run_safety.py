"""Nothing a run made is lost, and a kill at any point resumes to the uninterrupted result.

What output_dir may hold and what train.py then does (the table in mixlora/train/state.py's docstring):
finished runs are never wiped by resume=true, a failed start is restartable by the same command, damaged
checkpoints are skipped (or named, with the exact resume=PATH to use), a torn metrics line is dropped, pruning
never leaves a half-deleted checkpoint, and a second process on the same output_dir is locked out. The
reference for every resume is an uninterrupted run with the same settings: its weights, bit for bit.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixlora.runlock import FolderLockedError, RunLock
from mixlora.train import ConfigError
from mixlora.train.state import checkpoint_problem, list_checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import (ROOT, metrics, process_env, small, suite,  # noqa: E402,F401  (shared helpers and fixture)
                         train, train_process)

# 40 samples / micro 4 / accumulation 2 = 5 steps per epoch; dropout makes the RNG state matter.
COMMON = ("data.max_samples=40", "adapter.dropout=0.1", "trainer.log_every=1")


def assert_same_weights(a: Path, b: Path) -> None:
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), f"{name}: {k}"


def test_resume_never_wipes_a_finished_run(suite, tmp_path):
    out = tmp_path / "run"
    first = train(suite, out, *COMMON, "trainer.max_steps=20")  # finished: step 20 of 20, no checkpoint
    assert first["status"] == "finished" and not list_checkpoints(out)
    (out / "eval").mkdir()
    (out / "eval/metrics.json").write_text("{}")  # what eval.py run=OUT would have written
    # A changed image memo is the same run: it changes the speed, not the pixels.
    again = train(suite, out, *COMMON, "trainer.max_steps=20", "resume=true", "data.image_memory_mb=4")
    assert again == json.loads((out / "summary.json").read_text())  # nothing trained: the saved summary
    assert (out / "eval/metrics.json").read_text() == "{}"
    assert len(metrics(out)) == 20
    with pytest.raises(ConfigError, match=r"already holds this run, finished .* pass overwrite=true"):
        train(suite, out, *COMMON, "trainer.max_steps=20")
    assert (out / "eval/metrics.json").exists()


def test_resume_of_a_stopped_run_without_checkpoints_keeps_it(suite, tmp_path):
    out = tmp_path / "run"
    train(suite, out, *COMMON, "trainer.max_steps=3")  # stopped at 3 of 20; save_every=0: nothing to resume
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"holds this run \(stopped\) with no complete checkpoint .* its outputs "
                                          r"stay\. Pass overwrite=true"):
        train(suite, out, *COMMON, "trainer.max_steps=5", "resume=true")
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_a_failed_start_is_restarted_by_the_same_command(suite, tmp_path, monkeypatch):
    from mixlora.train import runner

    out = tmp_path / "run"

    def broken(*args, **kwargs):
        raise ConfigError("the data could not be read")

    monkeypatch.setattr(runner, "build_dataset", broken)
    with pytest.raises(ConfigError, match="the data could not be read"):
        train(suite, out, *COMMON, "trainer.max_steps=2")
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "failed" and "the data could not be read" in meta["error"]
    monkeypatch.undo()
    assert train(suite, out, *COMMON, "trainer.max_steps=2")["steps"] == 2  # the same command, no flags
    # ... and so is one whose config was then fixed (nothing was trained under the old one)
    monkeypatch.setattr(runner, "build_dataset", broken)
    with pytest.raises(ConfigError):
        train(suite, tmp_path / "other", *COMMON, "trainer.max_steps=2", "trainer.optimizer.lr=5")
    monkeypatch.undo()
    assert train(suite, tmp_path / "other", *COMMON, "trainer.max_steps=2")["steps"] == 2


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_reason(suite, tmp_path, damage, caplog):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(suite, full, *COMMON, "trainer.max_steps=6")
    train(suite, cut, *COMMON, "trainer.max_steps=4", "trainer.save_every=2", "trainer.keep_checkpoints=null")
    victim = cut / "checkpoints/step-000004/adapter_model.safetensors"
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])  # a torn file: wrong size
    else:
        data[-3] ^= 0xFF  # a flipped byte: same size, caught by the sha256
        victim.write_bytes(bytes(data))
    assert "adapter_model.safetensors" in checkpoint_problem(victim.parent)
    # resume=PATH on the damaged one: the file, the problem and the exact resume=... to use instead
    with pytest.raises(ConfigError, match=r"adapter_model\.safetensors .*resume from the previous complete one with "
                                          r"resume=.*step-000002"):
        train(suite, tmp_path / "fork", *COMMON, "trainer.max_steps=6", f"resume={victim.parent}")
    with caplog.at_level(logging.INFO, logger="mixlora.train"):
        summary = train(suite, cut, *COMMON, "trainer.max_steps=6", "trainer.save_every=2",
                        "trainer.keep_checkpoints=null", "resume=true")
    assert "checkpoint step-000004 is damaged and skipped" in caplog.text
    assert summary["steps_this_run"] == 4  # from step 2
    assert_same_weights(full, cut)


def test_an_unreadable_checkpoint_without_manifest_names_the_file_and_the_fix(suite, tmp_path):
    out = tmp_path / "run"
    train(suite, out, *COMMON, "trainer.max_steps=4", "trainer.save_every=2", "trainer.keep_checkpoints=null")
    ckpt = out / "checkpoints/step-000004"
    (ckpt / "manifest.json").unlink()  # as an older version wrote it: only resume=PATH takes it
    (ckpt / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"checkpoint .*step-000004 cannot be loaded \(.*\); resume from the "
                                          r"previous complete one with resume=.*step-000002"):
        train(suite, tmp_path / "fork", *COMMON, "trainer.max_steps=6", f"resume={ckpt}")


def test_a_torn_metrics_line_does_not_block_resume(suite, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(suite, full, *COMMON, "trainer.max_steps=4")
    train(suite, cut, *COMMON, "trainer.max_steps=2", "trainer.save_every=2")
    with open(cut / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 6.')  # killed while appending
    train(suite, cut, *COMMON, "trainer.max_steps=4", "trainer.save_every=2", "resume=true")
    assert [r["step"] for r in metrics(cut)] == [1, 2, 3, 4]
    assert [r["loss"] for r in metrics(cut)] == [r["loss"] for r in metrics(full)]
    with open(cut / "metrics.jsonl", "r+") as f:  # damage in the middle is not a torn append: say where
        f.write("garbage\n")
    with pytest.raises(ConfigError, match=r"metrics\.jsonl line 1 is not JSON"):
        train(suite, cut, *COMMON, "trainer.max_steps=4", "resume=true")


def test_a_second_process_on_the_same_output_dir_is_locked_out(suite, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mixlora.runlock import RunLock; "
                               "RunLock(sys.argv[1], 'training').acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf"in use by another process \(pid {holder.pid}: training"):
            train(suite, out, *COMMON, "trainer.max_steps=2")
    finally:
        holder.kill()
        holder.wait()
    assert train(suite, out, *COMMON, "trainer.max_steps=2")["steps"] == 2  # the kernel dropped the dead one's lock
    with RunLock(out, "eval"):
        pass


def test_kills_at_every_kind_of_point_resume_to_the_uninterrupted_weights(suite, tmp_path):
    """SIGKILL while appending metrics, before a manifest, in the middle of pruning, mid-training, during the
    final save and at a random moment; after each kill every folder named step-* is complete, and resuming
    with the same command ends with the uninterrupted run's weights and one metrics record per step."""
    steps = ("trainer.schedule_steps=12", "trainer.save_every=2", "trainer.keep_checkpoints=2")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_process(suite, full, *COMMON, *steps)  # a child process, as the killed ones are (same thread count)
    env = process_env()
    cmd = [str(ROOT / "train.py"), *small(suite, cut, *COMMON, *steps), "resume=true"]
    delay_ms = random.Random(0).randrange(3000, 9000)
    # (point, n): each resumed process dies at the n-th time it gets there
    kills = [("metrics", 3), ("manifest", 2), ("prune", 1), ("step", 3), ("final_save", 1), ("random", delay_ms)]
    for point, n in kills:
        proc = subprocess.run([sys.executable, str(ROOT / "tests/kill_at.py"), point, str(n), "--", *cmd], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        if point != "random" or proc.returncode != 0:  # the random kill may come after the run has finished
            assert proc.returncode == -signal.SIGKILL, f"{point}: {proc.stderr[-3000:]}"
        for ckpt in list_checkpoints(cut):
            assert checkpoint_problem(ckpt) is None, (point, ckpt.name)
    done = subprocess.run([sys.executable, *cmd], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((cut / "run.json").read_text())["status"] == "finished"
    assert_same_weights(full, cut)
    assert [r["step"] for r in metrics(cut)] == list(range(1, 13))
    assert [r["loss"] for r in metrics(cut)] == [r["loss"] for r in metrics(full)]
    assert not [p for p in (cut / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned
