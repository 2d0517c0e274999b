"""train.py / mixlora.train: configs, bad-input messages, and the train.py command line.

Runs use the tiny CPU stack on a small synthetic suite (4 records per task, train_setup.py) in this process,
composed through Hydra exactly as `python train.py OVERRIDES` composes them, or as real train.py processes.
References are independent of the code under test: adapter fields worked out by hand (alpha = 2r for LoRA, 2E
for released MixLoRA), the documented messages and file formats, and each batch-log line against its own
metrics.jsonl record. The training loop, checkpoints and resume are tested in test_train_loop.py.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixlora import AdapterConfig
from mixlora.train import ConfigError, compose_config, run
from mixlora.train.settings import TrainerSettings
from mixlora.train.state import list_checkpoints, plan_output_dir
from mixlora.train.validate import preflight
from train_setup import ROOT, local_checkpoints, metrics, process_env, small, suite, train  # noqa: F401  (the fixture)


# Every experiment except the paper-table rows (t1_, t1c_, cfs_, routing_, t2_), which tests/test_experiments.py
# covers: their composed settings and adapters, preflight on the tiny stack, two real steps per kind of row, and
# every row end to end through the table scripts.
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs/experiment").glob("*.yaml")
                     if not re.match(r"(t1c?|t2|cfs|routing)_", p.stem))


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
    (["data.image_memory_mb=-1"], r"data\.image_memory_mb must be a non-negative integer, got -1"),
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
    env = process_env()
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
    env = process_env()
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
    env = process_env()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"output_dir={tmp_path / 'run'}",
                           "adapter.rank=16", "adapter.num_factors=8"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.py: error: adapter: rank=16 must be smaller than num_factors=8" in proc.stderr
    assert not (tmp_path / "data").exists()  # failed before generating the synthetic suite
