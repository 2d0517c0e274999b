"""train.py / mixlora.train: the single-process loop, checkpoints and resume, and the stage-1 base.

Runs use the tiny CPU stack on a small synthetic suite (4 records per task, train_setup.py) in this process,
composed through Hydra exactly as `python train.py OVERRIDES` composes them. References are independent of the
code under test: hand-computed parameter counts and LR values, a hand-computed SGD step, the documented file
formats, reloading a run directory with mixlora.build.load_run and recomputing its check loss, and an
uninterrupted run for kill-and-resume.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mixlora import AdapterConfig
from mixlora.train import ConfigError, compose_config, run
from mixlora.train.optim import lr_multiplier, parameter_groups
from mixlora.train.state import list_checkpoints
from mixlora.train.validate import preflight
from train_setup import (ROOT, loss_on_first_samples, metrics, process_env, small, suite,  # noqa: F401  (the fixture)
                         train, train_process)


# ---------------------------------------------------------------------------------------------- training
def test_tiny_run_loss_decreases_and_trains_only_adapters_and_projector(suite, tmp_path):
    out = tmp_path / "run"
    summary = train(suite, out, "trainer.schedule_steps=40", "trainer.optimizer.lr=3e-3", "trainer.log_every=1",
                    "adapter.num_factors=8")
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.3

    # Hand-computed for the tiny Llama (hidden 128, SwiGLU 384, 2 layers) and E = 8 pools:
    # q,k,v,o: E(128+128) each; gate, up: E(128+384); down: E(384+128)  -> 8 * 2560 per layer
    pools = 2 * 8 * (4 * 256 + 3 * 512)
    # routers: router_a, router_b: E x d_in each; CFS (paper): r x d_in x E
    routers = 2 * sum(2 * 8 * d + 4 * d * 8 for d in [128] * 6 + [384])
    projector = 64 * 128 + 128
    counts = summary["parameters"]
    assert counts["pools"] == {"total": pools, "trainable": pools}
    assert counts["routers"] == {"total": routers, "trainable": 0}  # router_grad=none: no gradient, frozen
    assert counts["projector"] == {"total": projector, "trainable": projector}
    assert counts["llm"]["trainable"] == 0 and counts["vision"]["trainable"] == 0
    assert counts["all"]["trainable"] == pools + projector

    # Routers and everything else outside the pools/projector keep their seeded initial values.
    from mixlora.build import build_stack, load_run

    stack, cfg = load_run(out)
    fresh = build_stack(cfg.model, stack.tokenizer).model
    torch.manual_seed(cfg.seed)
    from mixlora import inject_adapters

    inject_adapters(fresh.llm, AdapterConfig.coerce(cfg.adapter))
    trained = dict(stack.model.named_parameters())
    for name, p in fresh.named_parameters():
        moved = not torch.equal(p, trained[name])
        assert moved == (".lora_b" in name or ".lora_a" in name or name.startswith("projector.")), name


def test_router_gradients_and_frozen_projector_follow_the_config(suite, tmp_path):
    st = train(suite, tmp_path / "st", "trainer.max_steps=2", "adapter.router_grad=straight_through",
               "adapter.num_factors=8", "model.builder.freeze_projector=true")
    assert st["parameters"]["routers"]["trainable"] == st["parameters"]["routers"]["total"] > 0
    assert st["parameters"]["projector"]["trainable"] == 0
    none = train(suite, tmp_path / "none", "trainer.max_steps=2", "adapter=none")
    assert none["parameters"]["all"]["trainable"] == none["parameters"]["projector"]["total"] == 64 * 128 + 128
    assert not (tmp_path / "none/adapter_config.json").exists()
    with pytest.raises(ConfigError, match="nothing to train"):
        train(suite, tmp_path / "nothing", "adapter=none", "model.builder.freeze_projector=true")


def test_lr_schedule_is_warmup_then_cosine(suite, tmp_path):
    out = tmp_path / "run"
    train(suite, out, "trainer.schedule_steps=10", "trainer.warmup_steps=3", "trainer.log_every=1",
          "trainer.optimizer.lr=2e-3", "trainer.min_lr_ratio=0.1")
    peak = 2e-3
    # hand-written reference: step s (1-based) uses the multiplier of s-1; warmup s/3, then cosine to 0.1
    expected = [peak * s / 3 for s in (1, 2, 3)]
    expected += [peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 7))) for s in range(4, 11)]
    assert [r["lr"] for r in metrics(out)] == pytest.approx(expected, rel=1e-9)
    assert lr_multiplier(5, 10, 0, "constant") == 1.0


def test_accumulation_and_clipping_against_hand_computed_sgd():
    """Two micro-batches, accumulation 2, SGD lr 1: the update is -clip(mean of the two gradients)."""
    from mixlora.train.backend import PlainBackend

    w = torch.nn.Parameter(torch.zeros(2))
    model = torch.nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=1.0)
    backend = PlainBackend(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), accumulation=2,
                           max_grad_norm=1.0, autocast_dtype=None, device=torch.device("cpu"))
    backend.backward((w * torch.tensor([3.0, 0.0])).sum())  # gradient (3, 0)
    backend.backward((w * torch.tensor([1.0, 4.0])).sum())  # gradient (1, 4)
    norm = backend.step()
    mean = torch.tensor([2.0, 2.0])  # ((3, 0) + (1, 4)) / 2, norm 2*sqrt(2) > 1: clipped to norm 1
    assert norm == pytest.approx(8 ** 0.5)
    torch.testing.assert_close(w.detach(), -mean / 8 ** 0.5, atol=1e-6, rtol=0)
    assert w.grad is None  # cleared for the next step


def test_weight_decay_skips_biases():
    lin = torch.nn.Linear(3, 2)
    groups = parameter_groups(lin.named_parameters(), weight_decay=0.1)
    assert [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups] == \
        [(0.1, [(2, 3)]), (0.0, [(2,)])]


def test_run_directory_loads_back_and_reproduces_the_check_loss(suite, tmp_path):
    from mixlora.build import load_run

    out = tmp_path / "run"
    summary = train(suite, out, "trainer.max_steps=3")
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "tokenizer", "adapter_config.json",
                                               "adapter_model.safetensors", "projector.safetensors",
                                               "metrics.jsonl", "summary.json", "run.json"}
    stack, cfg = load_run(out)
    assert cfg.trainer.max_steps == 3 and json.loads((out / "run.json").read_text())["status"] == "stopped"
    loss = loss_on_first_samples(stack, suite)
    assert float(loss) == pytest.approx(summary["check_loss"], abs=1e-6)
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 3]
    assert set(records[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s",
                               "routing"}
    # Routing health per module kind (MixLoRA, E = 16, 2 layers of the tiny Llama): each value is a mean of two
    # per-layer fractions k/16, so 32 x used is a whole number of factors (up to the 4-digit rounding).
    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for record in records:
        assert list(record["routing"]) == kinds
        for health in record["routing"].values():
            assert set(health) == {"used_a", "used_b", "entropy_a", "entropy_b"}
            assert all(0 < v <= 1 for v in health.values())
            assert all(abs(32 * health[k] - round(32 * health[k])) < 2e-3 for k in ("used_a", "used_b"))


def test_kill_and_resume_gives_the_uninterrupted_weights(suite, tmp_path):
    # 40 samples -> 10 micro-batches of 4 -> 5 steps per epoch: the runs cross two epoch boundaries.
    # Dropout 0.1 makes the RNG state matter; save_every=3 puts checkpoints at 3, 6, 9 (and at a max_steps stop).
    common = ("data.max_samples=40", "adapter.dropout=0.1", "trainer.save_every=3", "trainer.log_every=1",
              "trainer.keep_checkpoints=null")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(suite, full, *common, "trainer.max_steps=11")
    # The "killed" run: it reached step 8, but its last checkpoint is step 6 (the step-8 save is lost, and it
    # logged metrics past step 6).
    train(suite, cut, *common, "trainer.max_steps=8")
    assert [p.name for p in list_checkpoints(cut)] == ["step-000003", "step-000006", "step-000008"]
    import shutil

    shutil.rmtree(cut / "checkpoints/step-000008")
    state = json.loads((cut / "checkpoints/step-000006/trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (6, 1, 2)  # 6 steps = 12 micro-batches
    summary = train(suite, cut, *common, "trainer.max_steps=11", "resume=true")
    assert summary["steps_this_run"] == 5
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(cut / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in metrics(cut)] == [r["loss"] for r in metrics(full)]  # steps 7, 8 logged once
    # resume=PATH: continue another run's checkpoint in a new output_dir
    fork = tmp_path / "fork"
    assert train(suite, fork, *common, "trainer.max_steps=11", f"resume={cut / 'checkpoints/step-000003'}")[
        "steps_this_run"] == 8
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(fork / name))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(suite, tmp_path):
    """A real kill: `python train.py` is SIGKILLed right after its step-10 checkpoint appears (maybe while it
    writes the next one), then resumed by a second process; the weights equal an uninterrupted run's."""
    import signal
    import time

    common = ("data.max_samples=40", "adapter.dropout=0.1", "trainer.schedule_steps=40", "trainer.save_every=5",
              "trainer.log_every=1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_process(suite, full, *common)  # a child process, as the killed one is (same thread count)
    env = process_env()
    cmd = [sys.executable, str(ROOT / "train.py"), *small(suite, cut, *common)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "checkpoints/step-000010").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (cut / "summary.json").exists()
    done = subprocess.run([*cmd, "resume=true"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(cut / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k}"
    assert [r["step"] for r in metrics(cut)] == list(range(1, 41))


def test_checkpoints_are_atomic_and_pruned(suite, tmp_path, monkeypatch):
    from mixlora.train import backend as backend_module

    out = tmp_path / "run"
    train(suite, out, "trainer.max_steps=6", "trainer.save_every=2", "trainer.keep_checkpoints=2")
    assert [p.name for p in list_checkpoints(out)] == ["step-000004", "step-000006"]
    ckpt = out / "checkpoints/step-000006"
    assert {p.name for p in ckpt.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "config.yaml",
                                                "projector.safetensors", "tokenizer", "optimizer.pt", "scheduler.pt",
                                                "rng", "trainer_state.json", "manifest.json"}
    assert [p.name for p in (ckpt / "rng").iterdir()] == ["rank0.pt"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]

    # A crash in the middle of writing the step-8 checkpoint leaves step-6 as the latest complete one.
    calls = {"n": 0}
    original = backend_module.PlainBackend.save_state

    def crash_once(self, folder):
        calls["n"] += 1
        if calls["n"] == 1:
            (folder / "optimizer.pt").write_bytes(b"torn")
            raise OSError("disk full")
        original(self, folder)

    monkeypatch.setattr(backend_module.PlainBackend, "save_state", crash_once)
    with pytest.raises(OSError, match="disk full"):
        train(suite, out, "trainer.max_steps=10", "trainer.save_every=2", "resume=true")
    assert [p.name for p in list_checkpoints(out)] == ["step-000004", "step-000006"]
    summary = train(suite, out, "trainer.max_steps=10", "trainer.save_every=2", "resume=true")
    assert summary["steps_this_run"] == 4 and summary["steps"] == 10
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_missing_synthetic_suite_is_generated(tmp_path):
    out, data = tmp_path / "run", tmp_path / "syn"
    summary = run(compose_config([
        f"output_dir={out}", f"data.annotations={data / 'train.json'}", f"data.image_folder={data / 'images'}",
        "data.generate.per_task=2", "data.generate.eval_per_task=6", "data.generate.mme_images=1",
        "data.generate.stage1_size=0", "logger=disabled", "trainer.progress_bar=false", "trainer.max_steps=1",
        "trainer.save_every=0"]))
    records = json.loads((data / "train.json").read_text())
    assert len(records) == 2 * len({r["task_name"] for r in records}) >= 48 and summary["steps"] == 1


def test_wandb_offline_writes_its_run_into_output_dir(suite, tmp_path):
    out = tmp_path / "run"
    summary = train(suite, out, "trainer.max_steps=1", "logger=offline")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and summary["wandb_dir"] == str(runs[0])
    assert json.loads((out / "run.json").read_text())["wandb_id"] == runs[0].name.rsplit("-", 1)[1]


# ---------------------------------------------------------------------------------------------- stage-1 base
def test_full_llm_training_saves_a_base_that_a_second_stage_starts_from(suite, tmp_path):
    """model.train_llm=true (adapter=none) trains every LLM weight and writes model.safetensors; a stage-2 run
    with model.init_checkpoint starts from exactly those weights."""
    from mixlora.build import load_run

    with pytest.raises(ConfigError, match="combine it with adapter=none"):
        preflight(compose_config(small(suite, tmp_path / "bad", "model.train_llm=true")))
    base = tmp_path / "stage1"
    train(suite, base, "adapter=none", "model.train_llm=true", "trainer.max_steps=3")
    init = compose_config([])  # the seeded tiny model before training
    saved = load_file(str(base / "model.safetensors"))
    stage1, _ = load_run(base)
    assert torch.equal(saved["llm.lm_head.weight"], stage1.model.llm.lm_head.weight)
    from transformers import AutoTokenizer

    from mixlora.build import build_stack

    fresh = build_stack(init.model, AutoTokenizer.from_pretrained(str(base / "tokenizer"))).model
    changed = [k for k, v in fresh.llm.state_dict().items() if not torch.equal(v, saved[f"llm.{k}"])]
    assert any("layers.0.self_attn.q_proj" in k for k in changed)  # the LLM itself trained

    stage2 = tmp_path / "stage2"
    train(suite, stage2, "adapter=lora", f"model.init_checkpoint={base / 'model.safetensors'}", "trainer.max_steps=1")
    run2, _ = load_run(stage2)
    q = run2.model.llm.model.layers[0].self_attn.q_proj.base.weight
    assert torch.equal(q, saved["llm.model.layers.0.self_attn.q_proj.weight"])
    assert not (stage2 / "model.safetensors").exists()
