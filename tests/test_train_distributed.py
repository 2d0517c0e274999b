"""DeepSpeed ZeRO-2/3 training on CPU (gloo) against the plain single-process loop.

The reference is always the plain loop (tests/test_train_loop.py covers it) run in this process with the same
overrides: a DeepSpeed run must follow the same loss trajectory and end with the same adapter and projector
weights (fp32 on CPU; within what Adam can make of reduction-order
rounding: see assert_same_weights), write checkpoints that resume, and save weights gathered from the ZeRO-3
partitions that reload (mixlora.build.load_run) to the same check loss.

DeepSpeed runs happen in subprocesses (a process group per run). The first DeepSpeed start on a machine compiles
a small shared-memory op (~50 s); it is cached in TORCH_EXTENSIONS_DIR, set here to <repo>/.cache/torch_extensions
unless already set, so later runs take ~20 s.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixlora.distributed import build_deepspeed_config, load_deepspeed_json
from mixlora.train import compose_config, run
from mixlora.train.state import write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import local_checkpoints, loss_on_first_samples, metrics, small  # noqa: E402  (shared helpers of the train tests)

ROOT = Path(__file__).resolve().parents[1]


class Touch:
    """Unpickling this calls ``Path.touch(path)``: a stand-in for a checkpoint file that runs code when loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_deepspeed_checkpoint_files_load_without_running_code(tmp_path):
    from mixlora.distributed import weights_only_load

    marker, hostile = tmp_path / "pwned", tmp_path / "optim_states.pt"
    torch.save({"state": Touch(marker)}, hostile)
    with pytest.raises(pickle.UnpicklingError, match=r"names the global getattr, which a checkpoint may not hold"):
        weights_only_load(str(hostile))
    assert not marker.exists()
    torch.load(hostile, weights_only=False)  # what DeepSpeed's own loader does: the call happens
    assert marker.exists()


def ds_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache/torch_extensions"))
    return env


# Several single-process DeepSpeed runs in one interpreter (one process group, imports paid once).
RUNS_SCRIPT = """
import json, sys
from mixlora.train import compose_config, run
for overrides in json.loads(sys.argv[1]):
    run(compose_config(overrides))
"""


def run_in_subprocess(runs: list[list[str]], timeout: int = 600) -> None:
    proc = subprocess.run([sys.executable, "-c", RUNS_SCRIPT, json.dumps(runs)], env=ds_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def adam_step_bound(t: int, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """Largest |update| / lr that bias-corrected Adam can take at step ``t`` (1-based), for any gradients.

    m_t = (1-b1) sum_i b1^(t-i) g_i and v_t = (1-b2) sum_i b2^(t-i) g_i^2; Cauchy-Schwarz on
    sum_i (b1^(t-i) / b2^((t-i)/2)) (b2^((t-i)/2) g_i) gives
    |m_t| / sqrt(v_t) <= (1-b1) / sqrt(1-b2) * sqrt(sum_{k<t} (b1^2/b2)^k), times the bias correction
    sqrt(1-b2^t) / (1-b1^t). At t=1 this is exactly 1 (the first Adam step is lr * sign(g)).
    """
    geometric = sum((beta1 ** 2 / beta2) ** k for k in range(t))
    return (1 - beta1) / (1 - beta2) ** 0.5 * geometric ** 0.5 * (1 - beta2 ** t) ** 0.5 / (1 - beta1 ** t)


def assert_same_weights(a: Path, b: Path, lrs: list[float], atol: float = 1e-5,
                        max_outliers: float = 1e-3) -> None:
    """The weights of two runs of the same optimiser steps agree, allowing for what Adam does to rounding.

    ZeRO-3 reduces gradients in another order than the plain loop, so a gradient may differ in its last bits.
    Adam divides by sqrt(v), so for an element whose gradient is within rounding of zero such a difference can
    flip the sign of the whole step: that element may then drift by up to 2 * sum_t lr_t * adam_step_bound(t)
    (no weight decay in these runs), whatever the machine's kernels. That happens only to elements whose
    gradients are near zero — seen: 1 of 303,104 adapter elements at 1.4e-5 after 6 steps. So: every element
    within the Adam bound, and all but a fraction ``max_outliers`` within ``atol`` (1e-5: fp32 rounding of sums
    of O(100) terms of size O(1e-3)); a wrong partition, reduction or schedule moves most elements, not a few.
    """
    bound = 2 * sum(lr * adam_step_bound(t) for t, lr in enumerate(lrs, start=1))
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        diff = torch.cat([(x[k].double() - y[k].double()).abs().flatten() for k in sorted(x)])
        assert float(diff.max()) <= bound, f"{name}: max |diff| {float(diff.max()):.3g} beyond Adam's bound {bound:.3g}"
        outliers = int((diff > atol).sum())
        assert outliers <= max_outliers * diff.numel(), \
            f"{name}: {outliers} of {diff.numel()} elements differ by more than {atol} (max {float(diff.max()):.3g})"


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in metrics(out)]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=1, stage1_size=0, progress=False)
    return out


def test_deepspeed_config_is_built_from_the_trainer_settings():
    zero3 = load_deepspeed_json(ROOT / "configs/deepspeed/zero3.json")
    cfg = build_deepspeed_config(zero3, global_batch_size=128, micro_batch_size=16, world_size=4, max_grad_norm=1.0,
                                 bf16=True)
    # the paper's batch: 16 per GPU x accumulation 2 x 4 GPUs
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == \
        (128, 16, 2)
    assert cfg["gradient_clipping"] == 1.0 and cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["zero_allow_untested_optimizer"] is True and cfg["zero_optimization"]["stage"] == 3
    assert "auto" not in json.dumps(cfg) and "optimizer" not in cfg and "scheduler" not in cfg
    assert load_deepspeed_json(ROOT / "configs/deepspeed/zero2.json")["zero_optimization"]["stage"] == 2
    for name in ("zero2", "zero3"):
        t = compose_config([f"trainer={name}"]).trainer
        # the shipped file by its absolute path (${config_dir:}): found from any working directory
        assert (t.strategy, t.deepspeed_config) == ("deepspeed", str(ROOT / f"configs/deepspeed/{name}.json"))


def test_single_process_zero2_and_zero3_follow_the_plain_run_and_resume(suite, tmp_path):
    steps = ("trainer.max_steps=6", "trainer.save_every=3", "trainer.log_every=1")
    plain = tmp_path / "plain"
    run(compose_config(small(suite, plain, *steps)))
    z2, z3, z3r = tmp_path / "zero2", tmp_path / "zero3", tmp_path / "zero3_resumed"
    z3_bf16 = tmp_path / "zero3_bf16"
    real_plain, real_z3 = tmp_path / "real_plain", tmp_path / "real_zero3"
    real = local_checkpoints(tmp_path / "ckpt", suite / "train.json")
    run(compose_config(small(suite, real_plain, *real, "trainer.max_steps=3", "trainer.log_every=1")))
    run_in_subprocess([
        small(suite, z2, "trainer=zero2", *steps),
        small(suite, z3, "trainer=zero3", *steps),
        small(suite, z3r, "trainer=zero3", *steps[1:], "trainer.max_steps=4"),
        small(suite, z3r, "trainer=zero3", *steps, "resume=true"),  # continues from the step-4 checkpoint
        # bf16 on the CPU (the full bf16 checks, ZeRO-2 and 2 ranks included, are tests/test_bf16.py's slow ones)
        small(suite, z3_bf16, "trainer=zero3", "trainer.precision=bf16", *steps[1:], "trainer.max_steps=3"),
        # real weights: transformers' HfDeepSpeedConfig is alive while from_pretrained loads them partitioned
        small(suite, real_z3, *real, "trainer=zero3", "trainer.max_steps=3", "trainer.log_every=1"),
    ])
    reference = losses(plain)
    assert len(reference) == 6
    for out in (z2, z3, z3r):
        assert losses(out) == pytest.approx(reference, rel=1e-5), out.name
        assert [r["lr"] for r in metrics(out)] == pytest.approx([r["lr"] for r in metrics(plain)], rel=1e-9)
        assert_same_weights(plain, out, [r["lr"] for r in metrics(plain)])
    state = json.loads((z3 / "checkpoints/step-000006/trainer_state.json").read_text())
    assert state["step"] == 6 and (z3 / "checkpoints/step-000006/deepspeed/state").is_dir()
    assert json.loads((z3r / "summary.json").read_text())["steps_this_run"] == 2
    # within one bf16 unit roundoff u = 2^-8 of the fp32 loss (the argument: tests/test_bf16.py's docstring)
    bf16 = losses(z3_bf16)
    assert len(bf16) == 3 and all(abs(a - b) <= 2 ** -8 * b for a, b in zip(bf16, reference))
    assert json.loads((z3_bf16 / "summary.json").read_text())["precision"] == "bf16"
    # A shared checkpoint whose optimiser file names a callable: resuming refuses it and never calls it.
    hostile, marker = tmp_path / "hostile/checkpoints/step-000004", tmp_path / "pwned"
    shutil.copytree(z3r / "checkpoints/step-000004", hostile)
    optim = next((hostile / "deepspeed").rglob("*optim_states.pt"))
    torch.save({"optimizer_state_dict": Touch(marker)}, optim)
    write_manifest(hostile)  # as whoever shared it would
    proc = subprocess.run([sys.executable, "-c", RUNS_SCRIPT, json.dumps([
        small(suite, tmp_path / "from_hostile", "trainer=zero3", *steps, f"resume={hostile}")])],
        env=ds_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and not marker.exists()
    assert "cannot be loaded (UnpicklingError" in proc.stderr and "names the global getattr" in proc.stderr, \
        proc.stderr[-3000:]
    assert losses(real_z3) == pytest.approx(losses(real_plain), rel=1e-5)
    assert_same_weights(real_plain, real_z3, [r["lr"] for r in metrics(real_plain)])
    assert json.loads((real_z3 / "run.json").read_text())["fingerprint"]["trainer.zero3_init"] == "auto"


@pytest.mark.slow
def test_two_process_zero3_saves_gathered_weights_that_reload(suite, tmp_path):
    """torchrun, 2 ranks: micro-batches are dealt round-robin, so 2 ranks x micro 4 (no accumulation) see the same
    samples per step as one process with micro 4 x accumulation 2. Dropout off (its streams are per rank)."""
    from mixlora.build import load_run

    common = ("adapter.dropout=0", "trainer.save_every=2", "trainer.log_every=1")
    plain, z3 = tmp_path / "plain", tmp_path / "zero3"
    run(compose_config(small(suite, plain, *common, "trainer.max_steps=4")))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(ROOT / "train.py")]
    for extra in (["trainer.max_steps=2"], ["trainer.max_steps=4", "resume=true"]):  # stopped, then resumed
        proc = subprocess.run([*torchrun, *small(suite, z3, "trainer=zero3", *common, *extra)], env=ds_env(),
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert sorted(p.name for p in (z3 / "checkpoints/step-000004/rng").iterdir()) == ["rank0.pt", "rank1.pt"]
    assert losses(z3) == pytest.approx(losses(plain), rel=1e-5)
    assert_same_weights(plain, z3, [r["lr"] for r in metrics(plain)])  # full tensors, gathered from both ranks' partitions
    # Routing counts are summed over the ranks: the two ranks' micro-batches are the one process's two.
    assert [r["routing"] for r in metrics(z3)] == [r["routing"] for r in metrics(plain)]

    summary = json.loads((z3 / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["accumulation"] == 1
    stack, cfg = load_run(z3)
    loss = loss_on_first_samples(stack, suite)
    assert float(loss) == pytest.approx(summary["check_loss"], abs=1e-5)  # what the ZeRO-3 model computed
