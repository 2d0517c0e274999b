"""Sweeps through submitit (hydra/launcher=local: real processes started from pickled jobs, as on SLURM), and a
preempted sweep resubmitted with resume=true.

The reference is an uninterrupted in-process run of each sweep point with the same settings. The jobs run side
by side on the machine's cores, so their BLAS calls may split sums differently from the reference: weights are
compared with the Adam-aware bound of tests/test_train_distributed.py (losses tightly).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import ROOT, metrics, process_env, small, suite, train  # noqa: E402,F401
from test_train_distributed import assert_same_weights  # noqa: E402

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is in requirements.txt")

STEPS = ("trainer.schedule_steps=8", "trainer.save_every=2", "trainer.log_every=1", "data.max_samples=40")


def sweep_command(suite: Path, sweep_dir: Path) -> list[str]:
    overrides = [o for o in small(suite, sweep_dir, *STEPS) if not o.startswith("output_dir=")]
    return [sys.executable, str(ROOT / "train.py"), "--multirun", "hydra/launcher=local",
            f"hydra.sweep.dir={sweep_dir}", "adapter.rank=2,4", *overrides, "resume=true"]


def test_a_preempted_submitit_sweep_resubmitted_with_resume_ends_like_uninterrupted_runs(suite, tmp_path):
    sweep = tmp_path / "sweep"
    env = process_env()
    cmd = sweep_command(suite, sweep)
    # Preemption: the whole allocation (launcher and both jobs) is killed once job 0 has a mid-run checkpoint.
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    deadline = time.time() + 300
    while not (sweep / "0/checkpoints/step-000004").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, first.stderr.read()[-3000:]
    assert not (sweep / "0/summary.json").exists()
    submitted = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name != "%j")
    assert len(submitted) == 2  # two pickled jobs, one per sweep point

    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for job, rank in ((0, 2), (1, 4)):
        out = sweep / str(job)
        assert json.loads((out / "adapter_config.json").read_text())["rank"] == rank
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 8
        reference = tmp_path / f"reference_{rank}"
        train(suite, reference, *STEPS, f"adapter.rank={rank}")
        assert [r["step"] for r in metrics(out)] == list(range(1, 9))
        assert [r["loss"] for r in metrics(out)] == pytest.approx([r["loss"] for r in metrics(reference)], rel=1e-5)
        assert_same_weights(reference, out, [r["lr"] for r in metrics(reference)])
    job0 = json.loads((sweep / "0/summary.json").read_text())
    assert job0["steps_this_run"] < 8  # it continued from its checkpoint, it did not start again

    # Submitting a finished sweep once more trains nothing.
    third = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((sweep / "0/summary.json").read_text()) == job0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_with_a_c10d_rendezvous_match_one_node_with_two_ranks(suite, tmp_path):
    """`torchrun --nnodes 2 --nproc_per_node 1` twice on localhost (the multi-node launch of docs/training.md,
    with a c10d rendezvous) trains under ZeRO-2 exactly as `torchrun --standalone --nproc_per_node 2`: the same
    two ranks, the same data shards, the same gloo reductions."""
    from test_train_distributed import ds_env

    common = ("trainer=zero2", "adapter.dropout=0", "trainer.max_steps=4", "trainer.save_every=2",
              "trainer.log_every=1")
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run([*torchrun, "--standalone", "--nproc_per_node", "2", str(ROOT / "train.py"),
                           *small(suite, one, *common)], env=ds_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rdzv = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "mixlora-test"]
    nodes = [subprocess.Popen([*torchrun, *rdzv, str(ROOT / "train.py"), *small(suite, two, *common)], env=ds_env(),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    assert [r["loss"] for r in metrics(two)] == pytest.approx([r["loss"] for r in metrics(one)], rel=1e-6)
    assert_same_weights(one, two, [r["lr"] for r in metrics(one)])
