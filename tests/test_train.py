"""train.py / mixlora.train: configs, the single-process loop, checkpoints and resume, and bad-input messages.

Runs use the tiny CPU stack on a small synthetic suite (4 records per task) in this process, composed through
Hydra exactly as `python train.py OVERRIDES` composes them. References are independent of the code under
test: hand-computed parameter counts and LR values, the documented file formats, reloading a run directory
with mixlora.build.load_run and recomputing its check loss, and an uninterrupted run for kill-and-resume.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mixlora import AdapterConfig
from mixlora.train import ConfigError, compose_config, run
from mixlora.train.optim import lr_multiplier, parameter_groups
from mixlora.train.settings import TrainerSettings
from mixlora.train.state import list_checkpoints, plan_output_dir
from mixlora.train.validate import preflight

ROOT = Path(__file__).resolve().parents[1]
# Every experiment except the paper-table rows (t1_, t1c_, cfs_, routing_, t2_), which tests/test_experiments.py
# covers: their composed settings and adapters, preflight on the tiny stack, two real steps per kind of row, and
# every row end to end through the table scripts.
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs/experiment").glob("*.yaml")
                     if not re.match(r"(t1c?|t2|cfs|routing)_", p.stem))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.base_mix import split_base_mix
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=1, stage1_size=8, seen_per_task=1,
                   progress=False)
    split_base_mix(out, base_per_task=2)  # base_mix.json / stage2.json, as the demo's experiments name them
    return out


def small(suite: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a fast run: the small suite, micro batch 4, accumulation 2, no wandb, no bar."""
    return [f"output_dir={out}", f"data.annotations={suite / 'train.json'}", f"data.image_folder={suite / 'images'}",
            "data.generate=null", "logger=disabled", "trainer.progress_bar=false", "trainer.micro_batch_size=4",
            "trainer.global_batch_size=8", "trainer.schedule_steps=20", "trainer.save_every=0", *extra]


def train(suite, out, *extra):
    return run(compose_config(small(suite, out, *extra)))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- configs
def test_default_config_is_the_tiny_corrected_mixlora_demo():
    cfg = compose_config([])
    assert cfg.model.builder._target_ == "mixlora.model.tiny.build_tiny_llava"
    assert cfg.data.annotations == "data/synthetic/train.json" and cfg.data.generate.per_task == 150
    assert cfg.trainer.strategy == "single" and cfg.logger.mode == "offline"
    adapter = AdapterConfig.coerce(cfg.adapter)
    # corrected MixLoRA (docs/method.md#corrected-variant) with the LoRA baseline's multiplier alpha / r = 2
    assert (adapter.kind, adapter.cfs, adapter.routing_tokens, adapter.decode_routing) == \
        ("mixlora", "paper", "prompt", "prefill")
    assert adapter.alpha / adapter.rank == 2.0 and adapter.rank < adapter.num_factors
    assert cfg.trainer.schedule_steps * cfg.trainer.global_batch_size <= 4200  # within one epoch of the suite


def test_adapter_configs_are_plain_adapter_config_fields():
    released = AdapterConfig.coerce(compose_config(["adapter=mixlora_released"]).adapter)
    assert released == AdapterConfig.released(16, 4)  # every released behaviour, alpha = 2E
    e8 = AdapterConfig.coerce(compose_config(["adapter=mixlora_released", "adapter.num_factors=8"]).adapter)
    assert e8.alpha == 16.0  # alpha follows E
    lora = AdapterConfig.coerce(compose_config(["adapter=lora", "adapter.rank=8"]).adapter)
    assert (lora.kind, lora.rank, lora.alpha) == ("lora", 8, 16.0)  # alpha = 2r
    assert dict(compose_config(["adapter=none"]).adapter) == {"kind": "none"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_a_few_steps(name, suite, tmp_path):
    composed = compose_config([f"experiment={name}"])
    # Rows on the paper's 7B stack are smoke-run on the tiny stack, the synthetic suite and one process.
    on_paper_stack = composed.model.builder._target_ != "mixlora.model.tiny.build_tiny_llava"
    extra = ["model=tiny", "data=synthetic", "trainer=single"] if on_paper_stack else []
    overrides = [f"experiment={name}", *extra, *small(suite, tmp_path / "run", "trainer.max_steps=2")]
    # Files an experiment names under the repo's data/synthetic/ (e.g. the stage-1 captions) come from the
    # test's own suite, so the smoke run needs no generated data in the checkout.
    if composed.data.annotations.startswith("data/synthetic/"):
        overrides.append(f"data.annotations={suite / Path(composed.data.annotations).name}")
    if composed.model.tokenizer.get("corpus"):
        files = [str(suite / Path(f).name) for f in composed.model.tokenizer.corpus]
        overrides.append(f"model.tokenizer.corpus=[{','.join(files)}]")
    summary = run(compose_config(overrides))
    assert summary["steps"] == 2 and math.isfinite(summary["loss_last"])
    if composed.adapter.kind == "none":
        assert not (tmp_path / "run/adapter_config.json").exists()
        return
    saved = json.loads((tmp_path / "run/adapter_config.json").read_text())
    expected = AdapterConfig.coerce(composed.adapter)
    assert (saved["kind"], saved["rank"], saved["alpha"]) == (expected.kind, expected.rank, expected.alpha)


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
    from mixlora.data.collator import TrainingCollator
    from mixlora.data.dataset import ConversationDataset

    out = tmp_path / "run"
    summary = train(suite, out, "trainer.max_steps=3")
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "tokenizer", "adapter_config.json",
                                               "adapter_model.safetensors", "projector.safetensors",
                                               "metrics.jsonl", "summary.json", "run.json"}
    stack, cfg = load_run(out)
    assert cfg.trainer.max_steps == 3 and json.loads((out / "run.json").read_text())["status"] == "stopped"
    ds = ConversationDataset(str(suite / "train.json"), stack.tokenizer, stack.image_processor,
                             stack.model.num_image_tokens, image_folder=str(suite / "images"), max_length=256)
    batch = TrainingCollator(stack.tokenizer.pad_token_id)([ds[i] for i in range(4)])
    with torch.no_grad(), stack.model.routing(batch["routing_mask"]):
        loss = stack.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
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
    train(suite, full, *common)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
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
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
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


# ---------------------------------------------------------------------------------------------- bad inputs
def bad(suite, tmp_path, *extra):
    return compose_config(small(suite, tmp_path / "run", *extra))


@pytest.mark.parametrize("extra, message", [
    (["data.annotations=/nonexistent/train.json"], "training file '/nonexistent/train.json' does not exist"),
    (["data.image_folder=/nonexistent/images"], "image folder '/nonexistent/images' does not exist"),
])
def test_missing_data_is_reported_before_training(suite, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        run(bad(suite, tmp_path, *extra))
    assert not (tmp_path / "run/metrics.jsonl").exists()


@pytest.mark.parametrize("extra, message", [
    (["adapter.rank=16", "adapter.num_factors=16"], r"adapter: rank=16 must be smaller than num_factors=16"),
    (["adapter.routing_source=task"], r"routing_source=task routes every instance on a task-definition row"),
    (["adapter.cfs=paperr"], r"cfs='paperr' is not a valid option; choose one of 'none', 'paper', 'released'"),
    (["+adapter.experts=4"], r"unknown adapter config key\(s\) \['experts'\]"),
    (["trainer.precision=fp8"], r"trainer\.precision='fp8' is not a valid option"),
    # bf16 runs on the CPU (tests/test_bf16.py); what still cannot work is a CUDA device that is not there.
    pytest.param(["trainer.precision=bf16", "trainer.device=cuda"],
                 r"trainer\.device=cuda but no CUDA device is available; use trainer\.device=auto or cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")),
    (["trainer.lr_schedule=linear"], r"trainer\.lr_schedule='linear' is not a valid option"),
    (["+trainer.lr=0.1"], r"unknown trainer config key\(s\) \['lr'\]"),
    (["trainer.optimizer.lr=-1"], r"trainer\.optimizer\.lr must be a positive number"),
    (["logger.mode=cloud"], r"logger\.mode='cloud' is not a valid option"),
    (["data.template=chatml"], r"data\.template='chatml' is not a valid option"),
    (["trainer.global_batch_size=10"], r"global_batch_size=10 is not divisible by world_size \(1\) x "
                                       r"trainer\.micro_batch_size \(4\) = 4"),
    (["trainer=zero2", "trainer.deepspeed_config=/nonexistent.json"], r"'/nonexistent\.json' does not exist"),
    (["resume=true", "overwrite=true"], "resume and overwrite are both set"),
    (["trainer.progress=fancy"], r"trainer\.progress='fancy' is not a valid option; choose one of 'auto', 'bar'"),
    (["trainer.progress=bar"], r"trainer\.progress_bar=false contradicts trainer\.progress=bar"),
])
def test_invalid_settings_are_reported_before_heavy_work(suite, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        preflight(bad(suite, tmp_path, *extra))


def test_batch_must_divide_over_processes_and_single_runs_one_process(suite, tmp_path):
    cfg = bad(suite, tmp_path, "trainer=zero2", "trainer.global_batch_size=12", "trainer.micro_batch_size=4")
    with pytest.raises(ConfigError, match=r"not divisible by world_size \(2\) x trainer\.micro_batch_size \(4\) = 8"):
        preflight(cfg, world=2, rank=0)
    assert preflight(bad(suite, tmp_path, "trainer=zero2", "trainer.global_batch_size=16"), world=2).accumulation == 2
    with pytest.raises(ConfigError, match="trainer.strategy=single runs one process"):
        preflight(bad(suite, tmp_path), world=2, rank=0)


def test_unknown_target_modules_are_reported(suite, tmp_path):
    with pytest.raises(ConfigError, match=r"target module\(s\) \['qkv_proj'\] match no nn\.Linear"):
        run(bad(suite, tmp_path, "adapter.target_modules=[qkv_proj,o_proj]"))
    assert not (tmp_path / "run/metrics.jsonl").exists()


def local_checkpoints(folder: Path, corpus: Path) -> list[str]:
    """Tiny stand-ins for the paper's local checkpoints (Vicuna folder with its tokenizer, CLIP folder, LLaVA
    mm_projector.bin), as the overrides of configs/model/llava_v1_vicuna7b.yaml."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mixlora.build import build_tokenizer_from_config
    from mixlora.model.llm import build_llm
    from mixlora.model.tiny import tiny_clip_vision_config, tiny_llm_config

    tok = build_tokenizer_from_config({"kind": "local_bpe", "vocab_size": 400}, [corpus])
    llm_dir, clip_dir, projector = folder / "vicuna", folder / "clip", folder / "mm_projector.bin"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_llm(config=tiny_llm_config(vocab_size=len(tok), hidden_size=64, num_layers=2,
                                         num_heads=4)).save_pretrained(llm_dir)
        CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())).save_pretrained(clip_dir)
        torch.save({"model.mm_projector.weight": (0.05 * torch.randn(64, 64)).half(),
                    "model.mm_projector.bias": torch.zeros(64).half()}, projector)
    tok.save_pretrained(llm_dir)
    return ["model=llava_v1_vicuna7b", f"model.paths.llm={llm_dir}", f"model.paths.vision={clip_dir}",
            f"model.paths.projector={projector}", "model.builder.llm.dtype=float32"]


def test_model_paths_without_weights_and_unknown_targets_on_a_local_llm(suite, tmp_path):
    paths = local_checkpoints(tmp_path, suite / "train.json")
    llm_dir = tmp_path / "vicuna"
    # the LLM folder is checked against its config.json on the meta device: no weights are read
    with pytest.raises(ConfigError, match=r"target module\(s\) \['qkv_proj'\] match no nn\.Linear"):
        preflight(bad(suite, tmp_path, *paths, "adapter.target_modules=[qkv_proj]"))
    assert preflight(bad(suite, tmp_path, *paths)).adapter.kind == "mixlora"
    (llm_dir / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"llm\.path: .*vicuna holds no model weights"):
        preflight(bad(suite, tmp_path, *paths))
    with pytest.raises(ConfigError, match=r"model\.paths\.llm', 'model\.paths\.projector', 'model\.paths\.vision'\] "
                                          r"are not set"):
        preflight(bad(suite, tmp_path, "model=llava_v1_vicuna7b"))


def test_deepspeed_files_with_auto_or_trainer_keys_are_refused(suite, tmp_path):
    auto = tmp_path / "auto.json"
    auto.write_text(json.dumps({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}}))
    with pytest.raises(ConfigError, match=r"\"auto\" values at \['zero_optimization\.reduce_bucket_size'\]"):
        preflight(bad(suite, tmp_path, "trainer=zero3", f"trainer.deepspeed_config={auto}"))
    owned = tmp_path / "owned.json"
    owned.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": 64}))
    with pytest.raises(ConfigError, match=r"sets \['train_batch_size'\], which train\.py derives"):
        preflight(bad(suite, tmp_path, "trainer=zero2", f"trainer.deepspeed_config={owned}"))


def test_output_dir_holding_a_run_is_refused_unless_resume_or_overwrite(suite, tmp_path):
    out = tmp_path / "run"
    train(suite, out, "trainer.max_steps=2", "trainer.save_every=2")
    with pytest.raises(ConfigError, match=r"already holds this run \(last checkpoint step-000002\); pass resume=true"):
        preflight(bad(suite, tmp_path, "trainer.max_steps=2"))
    with pytest.raises(ConfigError, match=r"holds a different run \(config differs: trainer\.optimizer\.lr: 0\.001 -> "
                                          r"0\.002\)"):
        preflight(bad(suite, tmp_path, "trainer.optimizer.lr=2e-3"))
    with pytest.raises(ConfigError, match=r"resume=true, but output_dir=.* holds a different run \(config differs: "
                                          r"adapter\.alpha: 8 -> 4; adapter\.rank: 4 -> 2\)"):
        preflight(bad(suite, tmp_path, "adapter.rank=2", "resume=true"))
    # max_steps and save_every may change on resume; the schedule may not
    assert preflight(bad(suite, tmp_path, "trainer.max_steps=4", "trainer.save_every=1", "resume=true")).output.mode \
        == "resume"
    summary = train(suite, out, "trainer.optimizer.lr=2e-3", "trainer.max_steps=1", "overwrite=true")
    assert summary["steps"] == 1 and not list_checkpoints(out)
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="its files have no run.json"):
        plan_output_dir(foreign, {}, False, False)


def test_max_steps_beyond_the_schedule_is_refused(suite, tmp_path):
    with pytest.raises(ConfigError, match=r"max_steps=30 exceeds the scheduled 20 steps"):
        preflight(bad(suite, tmp_path, "trainer.max_steps=30"))
    # 112 samples / micro 4 = 28 micro-batches / accumulation 2 = 14 steps per epoch
    with pytest.raises(ConfigError, match=r"max_steps=30 exceeds the scheduled 28 steps \(2 epoch\(s\) x 14 steps\)"):
        train(suite, tmp_path / "run", "trainer.schedule_steps=null", "trainer.epochs=2", "trainer.max_steps=30")


def test_trainer_settings_reject_inconsistent_values():
    with pytest.raises(ConfigError, match="strategy=deepspeed needs trainer.deepspeed_config"):
        TrainerSettings(strategy="deepspeed")
    with pytest.raises(ConfigError, match=r"warmup_ratio must be in \[0, 1\)"):
        TrainerSettings(warmup_ratio=1.5)
    with pytest.raises(ConfigError, match="needs `_partial_: true`"):
        TrainerSettings(optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3})


def test_slurm_launcher_config_runs_one_task_per_gpu():
    from omegaconf import OmegaConf

    text = (ROOT / "configs/hydra/launcher/slurm.yaml").read_text()
    assert text.startswith("# @package hydra.launcher")
    cfg = OmegaConf.load(ROOT / "configs/hydra/launcher/slurm.yaml")
    assert list(cfg.defaults) == ["submitit_slurm"] and cfg.tasks_per_node == cfg.gpus_per_node == 4


@pytest.mark.slow
def test_cli_multirun_gives_every_job_its_own_run_directory(suite, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    overrides = [o for o in small(suite, tmp_path / "unused", "trainer.max_steps=1") if not o.startswith("output_dir")]
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--multirun", "adapter.rank=2,4", *overrides],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "runs/multirun").glob("*/*/[0-9]"))
    assert [j.name for j in jobs] == ["0", "1"]
    assert [json.loads((j / "adapter_config.json").read_text())["rank"] for j in jobs] == [2, 4]
    assert all(json.loads((j / "summary.json").read_text())["steps"] == 1 for j in jobs)


def test_batch_log_gets_a_plain_line_every_log_every_steps(suite, tmp_path):
    """stdout and stderr are pipes (not terminals), as under a batch system: trainer.progress=auto prints one
    flushed line per metrics record instead of a bar, with the record's own loss and lr."""
    out = tmp_path / "run"
    overrides = [o for o in small(suite, out, "trainer.max_steps=5", "trainer.log_every=2")
                 if not o.startswith("trainer.progress_bar")]  # the default: progress=auto
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout + proc.stderr  # no bar redraws
    pattern = (r"step (\d+)/5 \((\d+)%\) \| loss (\d+\.\d{4}) \| lr (\S+) \| ([\d,]+) tok/s \| "
               r"elapsed (\d+:\d\d:\d\d) \| ETA (\d+:\d\d:\d\d) \| pool used min A (\d\.\d\d) B (\d\.\d\d)$")
    lines = [m for m in (re.search(pattern, line) for line in proc.stdout.splitlines()) if m]
    records = metrics(out)
    assert [int(m[1]) for m in lines] == [r["step"] for r in records] == [1, 2, 4, 5]  # step 1, every 2, the last
    assert [int(m[2]) for m in lines] == [20, 40, 80, 100]
    assert [m[3] for m in lines] == [f"{r['loss']:.4f}" for r in records]
    assert [m[4] for m in lines] == [f"{r['lr']:.1e}" for r in records]
    assert [float(m[8]) for m in lines] == [round(min(g["used_a"] for g in r["routing"].values()), 2)
                                            for r in records]
    assert lines[-1][7] == "0:00:00"  # nothing left at the last step
    # The lines are in the run's log file too (the logger, not a bare print).
    assert sum("pool used min" in line for line in (out / "train_rank0.log").read_text().splitlines()) == 4


def test_cli_reports_bad_input_with_exit_status_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"output_dir={tmp_path / 'run'}",
                           "adapter.rank=16", "adapter.num_factors=8"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.py: error: adapter: rank=16 must be smaller than num_factors=8" in proc.stderr
    assert not (tmp_path / "data").exists()  # failed before generating the synthetic suite


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
