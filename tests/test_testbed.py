"""The testbed's rows, report arithmetic and CLI (``mixlora.testbed``); the recipe itself at a reduced size.

References: hand-computed means, standard errors and verdicts on hand-written per-task scores; parameter counts
from the LoRA/MixLoRA formulas written out here (E (d_in + d_out) per adapted layer); the adapter configs the
rows must compose to.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mixlora import AdapterConfig
from mixlora.testbed import report as R
from mixlora.testbed.recipe import RECORD, SPLITS
from mixlora.testbed.rows import BY_NAME, DEMO_ROWS, ROWS, select_rows
from mixlora.train import compose_config

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["testbed+colour_name", "testbed+colour_flip", "testbed+size_name", "testbed+size_flip"]


def test_every_row_composes_to_the_adapter_it_names():
    for row in ROWS:
        cfg = compose_config(list(row.overrides))
        if row.kind == "full":
            assert cfg.adapter.kind == "none" and cfg.model.train_llm is True
            continue
        adapter = AdapterConfig.coerce(cfg.adapter)
        assert adapter.rank == row.rank
        if row.method == "mixlora":
            assert adapter.num_factors == row.num_factors and adapter.rank < adapter.num_factors
            assert adapter.routing_tokens == row.routing
            e, r = row.num_factors, row.rank
            # variant: (cfs, alpha, decode routing, routing source, router gradient), written out per variant
            expected = {
                "corrected": ("paper", 2 * r, "prefill", "instance", "none"),
                "released": ("released", 2 * e, "per_step", "instance", "none"),
                "ifs_only": ("none", 2 * r, "prefill", "instance", "none"),
                "random": ("paper", 2 * r, "prefill", "random", "none"),
                "straight_through": ("paper", 2 * r, "prefill", "instance", "straight_through"),
                "straight_through_detached": ("paper", 2 * r, "prefill", "instance", "straight_through_detached"),
                "corrected_cfs_released": ("released", 2 * r, "prefill", "instance", "none"),
                "released_alpha_2r": ("released", 2 * r, "per_step", "instance", "none"),
            }[row.variant]
            assert (adapter.cfs, adapter.alpha, adapter.decode_routing, adapter.routing_source,
                    adapter.router_grad) == expected, row.name
        else:
            assert adapter.kind == "lora" and adapter.alpha == 2 * row.rank
    assert set(DEMO_ROWS) <= set(BY_NAME)
    with pytest.raises(ValueError, match="unknown testbed rows"):
        select_rows(["lora_r3"])


def test_the_released_gap_decomposes_one_difference_at_a_time():
    """mixc_e8_r2_instr -> mixc_e8_r2_instr_cfsrel -> mixrel_e8_r2_instr_alpha2r -> mixrel_e8_r2_instr: each step
    changes one thing (routing precision goes with the released decode: in float32, the testbed's dtype, 'layer'
    and 'float32' are the same arithmetic)."""
    from dataclasses import asdict

    chain = ["mixc_e8_r2_instr", "mixc_e8_r2_instr_cfsrel", "mixrel_e8_r2_instr_alpha2r", "mixrel_e8_r2_instr"]
    configs = [asdict(AdapterConfig.coerce(compose_config(list(BY_NAME[n].overrides)).adapter)) for n in chain]
    steps = [{k for k in a if a[k] != b[k]} for a, b in zip(configs, configs[1:])]
    assert steps == [{"cfs"}, {"decode_routing", "routing_precision"}, {"alpha"}]
    claimed = {(a, b) for _, a, b in R.CLAIMS}
    assert set(zip(chain, chain[1:])) <= claimed  # each step is a reported claim


def test_lora_r8_trains_as_many_numbers_as_mixlora_e8_r2():
    """Frozen routers: MixLoRA E/r trains E (d_in + d_out) per layer, LoRA rank r' trains r' (d_in + d_out)."""
    from mixlora import inject_adapters
    from mixlora.model import build_tiny_llava

    def trainable(cfg):
        model = build_tiny_llava(vocab_size=64, image_token_id=5)
        inject_adapters(model.llm, AdapterConfig(**cfg))
        return sum(p.numel() for n, p in model.llm.named_parameters() if p.requires_grad)

    # tiny LLM: 2 blocks, hidden 128, SwiGLU 384; q,k,v,o 128->128, gate/up 128->384, down 384->128
    per_block = 4 * (128 + 128) + 2 * (128 + 384) + (384 + 128)
    assert trainable(dict(kind="lora", rank=8, alpha=16.0)) == 2 * 8 * per_block
    assert trainable(dict(kind="mixlora", num_factors=8, rank=2, alpha=4.0)) == 2 * 8 * per_block


def test_stage2_learning_rate_is_the_shared_rate_times_the_row_scale(tmp_path):
    from mixlora.testbed.recipe import TABLE, stage2_overrides

    def lr(name):
        overrides = stage2_overrides(BY_NAME[name], 0, tmp_path, tmp_path / "data", TABLE, tmp_path / "run")
        return [float(o.split("=", 1)[1]) for o in overrides if o.startswith("trainer.optimizer.lr=")]

    assert lr("lora_r8") == [TABLE.adapter_lr] and lr("full_ft") == [TABLE.full_lr]
    assert lr("lora_r8_lr_scaled") == [pytest.approx(TABLE.adapter_lr * 2 / 8)]  # one lr override, scaled


def test_table_runs_compose_from_a_copy_of_the_configs_taken_when_it_starts(tmp_path, monkeypatch):
    """Editing the config tree while a table runs must not reach the runs still to come: after the first run
    (stage 1) the source tree is broken, yet every later run still composes, from one unchanged copy."""
    import shutil

    from mixlora.package_data import config_dir
    from mixlora.testbed import recipe

    source = Path(shutil.copytree(config_dir(), tmp_path / "configs"))
    used = []

    def train(overrides, config_dir=None):
        compose_config([], config_dir=config_dir)  # raises on a broken tree
        used.append(config_dir)
        (source / "train.yaml").write_text("defaults: [\n")  # the checkout is edited mid-table
        out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
        Path(out).mkdir(parents=True, exist_ok=True)
        return {"loss_last": 0.0}

    monkeypatch.setattr(recipe, "train", train)
    monkeypatch.setattr(recipe, "evaluate_run", lambda *args, **kwargs: {})
    plan = [(BY_NAME["lora_r2"], 0), (BY_NAME["mixc_e8_r2_instr"], 0)]
    failed = recipe.run_table(tmp_path / "out", tmp_path / "data", plan, recipe.DEMO, ["testbed+colour_name"],
                              say=lambda line: None, config_source=source)
    assert failed == [] and len(used) == 3 and len(set(used)) == 1 and used[0] != source
    assert not used[0].exists()  # the copy is removed when the table ends
    import yaml

    with pytest.raises(yaml.YAMLError):
        compose_config([], config_dir=source)  # the source really was broken


def _fake_run(out: Path, row: str, seed: int, scores: dict, task=None, count=100):
    run = out / "runs" / f"{row}_s{seed}" / (task.split("+")[-1] if task else "")
    for split in SPLITS:
        per_task = {t: {"accuracy": a, "correct": round(a * count / 100), "count": count} for t, a in scores.items()}
        folder = run / "eval" / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"scores": {"per_task": per_task}}))
    (run / RECORD).write_text(json.dumps({"row": row, "seed": seed, "task": task}))


def test_report_means_standard_errors_and_verdicts(tmp_path):
    # lora_r2: two seeds; mixc: two seeds; specialists: one seed, one run per task
    _fake_run(tmp_path, "lora_r2", 0, dict(zip(TASKS, [80, 40, 70, 50])))
    _fake_run(tmp_path, "lora_r2", 1, dict(zip(TASKS, [84, 44, 74, 54])))
    _fake_run(tmp_path, "mixc_e8_r2_instr", 0, dict(zip(TASKS, [90, 80, 85, 75])))
    _fake_run(tmp_path, "mixc_e8_r2_instr", 1, dict(zip(TASKS, [90, 84, 85, 79])))
    for task, acc in zip(TASKS, [95, 90, 92, 88]):
        _fake_run(tmp_path, "spec_lora_r2", 0, {t: (acc if t == task else 0.0) for t in TASKS}, task=task)
    report = R.build_report(tmp_path, TASKS)
    by = {r["row"]: r for r in report["rows"]}
    lora = by["lora_r2"]["seen"]
    assert lora["mean"] == pytest.approx((60 + 64) / 2)  # run means 60 and 64
    assert lora["se"] == pytest.approx(math.sqrt(((60 - 62) ** 2 + (64 - 62) ** 2) / 1) / math.sqrt(2))
    assert lora["se_from"] == "seeds"
    spec = by["spec_lora_r2"]["seen"]  # one seed: each task's own accuracy, binomial SE over 100 instances each
    assert spec["mean"] == pytest.approx((95 + 90 + 92 + 88) / 4)
    terms = sum(p * (1 - p) / 100 for p in (0.95, 0.90, 0.92, 0.88))
    assert spec["se"] == pytest.approx(100 * math.sqrt(terms) / 4)
    colour = by["lora_r2"]["seen_families"]["colour"]
    assert colour["mean"] == pytest.approx(((80 + 40) / 2 + (84 + 44) / 2) / 2)
    claim = next(c for c in report["claims"] if c["b"] == "lora_r2" and c["a"] == "mixc_e8_r2_instr")
    mix = by["mixc_e8_r2_instr"]["seen"]
    assert claim["seen"]["diff"] == pytest.approx(mix["mean"] - lora["mean"])
    assert claim["seen"]["se"] == pytest.approx(math.sqrt(mix["se"] ** 2 + lora["se"] ** 2))
    assert claim["seen"]["verdict"] == "yes"  # +21 against 2 SE of about 4
    size = report["interference"]["size"]
    assert size["diff"] == pytest.approx((92 + 88) / 2 - ((70 + 50) / 2 + (74 + 54) / 2) / 2)
    text = R.markdown(report)
    assert "| lora_r2 | 2 |" in text and "Interference" in text
    R.plot_families(report, tmp_path / "plots" / "f.png")
    assert (tmp_path / "plots" / "f.png").stat().st_size > 0


def test_incomplete_seed_is_left_out_and_difference_within_noise_is_not_a_verdict(tmp_path):
    _fake_run(tmp_path, "lora_r2", 0, dict(zip(TASKS, [50, 50, 50, 50])))
    _fake_run(tmp_path, "lora_r2", 1, dict(zip(TASKS[:2], [50, 50])))  # missing tasks: not a complete run
    row = R.summarize_row("lora_r2", R.collect(tmp_path)["lora_r2"], TASKS)
    assert row["seeds"] == [0]
    a = {"mean": 51.0, "se": 1.0}
    b = {"mean": 50.0, "se": 1.0}
    assert R.difference(a, b)["verdict"] == "not distinguishable"
    assert R.difference(b, {"mean": 60.0, "se": 1.0})["verdict"] == "reversed"


def test_merged_report_carries_rows_out_has_not_run_and_computes_claims_over_the_union(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for task, acc in zip(TASKS, [95, 90, 92, 88]):
        _fake_run(first, "spec_lora_r2", 0, {t: (acc if t == task else 0.0) for t in TASKS}, task=task)
    _fake_run(first, "lora_r2", 0, dict(zip(TASKS, [10, 10, 10, 10])))  # replaced by the second folder's row
    _fake_run(first, "lora_r2", 1, dict(zip(TASKS, [12, 12, 12, 12])))
    usage = {"run": "mixc_e8_r2_instr_s0", "per_task": 2, "tasks": TASKS[:1], "usage": {TASKS[0]: [1.0, 1.0]}}
    R.write_report(first, TASKS, "first command", usage, stem="first")
    _fake_run(second, "lora_r2", 0, dict(zip(TASKS, [80, 40, 70, 50])))
    _fake_run(second, "lora_r2", 1, dict(zip(TASKS, [84, 44, 74, 54])))
    _fake_run(second, "mixc_e8_r2_instr", 0, dict(zip(TASKS, [90, 80, 85, 75])))
    _fake_run(second, "mixc_e8_r2_instr", 1, dict(zip(TASKS, [90, 84, 85, 79])))
    report = R.write_report(second, TASKS, "second command", merge=[first / "first.json"])
    by = {r["row"]: r for r in report["rows"]}
    assert [r["row"] for r in report["rows"]] == ["spec_lora_r2", "lora_r2", "mixc_e8_r2_instr"]  # table order
    assert by["spec_lora_r2"]["from"] == str(first / "first.json") and "from" not in by["lora_r2"]
    assert by["lora_r2"]["seen"]["mean"] == pytest.approx((60 + 64) / 2)  # the second folder's runs, not 11
    assert by["spec_lora_r2"]["seen"]["mean"] == pytest.approx((95 + 90 + 92 + 88) / 4)
    size = report["interference"]["size"]  # the carried specialists against the second folder's LoRA r2
    assert size["diff"] == pytest.approx((92 + 88) / 2 - ((70 + 50) / 2 + (74 + 54) / 2) / 2)
    assert any(c["a"] == "mixc_e8_r2_instr" and c["b"] == "lora_r2" for c in report["claims"])
    assert report["merged"] == [{"file": str(first / "first.json"), "command": "first command",
                                 "rows": ["spec_lora_r2"]}]
    assert report["routing_usage"] == usage  # none measured in the second folder: the merged one is kept
    text = (second / "results.md").read_text()
    assert "| spec_lora_r2 * | 1 |" in text and "| lora_r2 | 2 |" in text and "first command" in text
    # merging the merged report again keeps where each carried row came from
    again = R.build_report(tmp_path / "empty", TASKS, merge=[second / "results.json"])
    assert {r["row"]: r["from"] for r in again["rows"]}["spec_lora_r2"] == str(first / "first.json")
    assert [m["file"] for m in again["merged"]] == [str(first / "first.json"), str(second / "results.json")]


def test_merge_refuses_other_tasks_and_files_that_are_not_reports(tmp_path):
    _fake_run(tmp_path / "a", "lora_r2", 0, dict(zip(TASKS, [50, 50, 50, 50])))
    R.write_report(tmp_path / "a", TASKS)
    with pytest.raises(ValueError, match="must score the same tasks"):
        R.build_report(tmp_path / "b", TASKS[:2], merge=[tmp_path / "a" / "results.json"])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a testbed report"):
        R.build_report(tmp_path / "b", TASKS, merge=[tmp_path / "list.json"])
    cli = subprocess.run([sys.executable, "-m", "mixlora.testbed", "report", str(tmp_path / "b"), "--data",
                          str(tmp_path / "nodata"), "--merge", str(tmp_path / "missing.json")],
                         capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 2 and "cannot read the report to merge" in cli.stderr
    train = subprocess.run([sys.executable, "-m", "mixlora.testbed", "table", str(tmp_path / "b"), "--merge",
                            str(tmp_path / "list.json")], capture_output=True, text=True, cwd=ROOT)
    assert train.returncode == 2 and "--merge is an option of the report command" in train.stderr


def test_cli_rejects_unknown_rows_and_lists_runs(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "mixlora.testbed", "table", str(tmp_path), "--rows", "nope"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown testbed rows" in bad.stderr
    dry = subprocess.run([sys.executable, "-m", "mixlora.testbed", "demo", str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert sum(line.startswith("lora_r2 seed") for line in lines) == 2
    # One specialist per task of the default build: colour and position, each as name / next / flip.
    assert sum(line.startswith("spec_lora_r2 seed 0 task") for line in lines) == 6
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_demo_recipe_at_reduced_size_writes_the_report_and_resumes(tmp_path):
    """The demo's rows and seeds through the real recipe (stage 1, full, specialists, LoRA, MixLoRA with
    instruction routing, pooled cached features), tiny sizes; a second call trains nothing."""
    from mixlora.data.testbed import make_testbed
    from mixlora.testbed.recipe import Budget, build_tasks, run_table, seeds_for
    from mixlora.testbed.usage import routing_usage

    data, out = tmp_path / "data", tmp_path / "out"
    make_testbed(data, train_images=40, test_images=24, train_per_task=8, test_per_task=2, stage1_size=24,
                 progress=False)
    tasks = build_tasks(data)
    assert tasks == [f"testbed+{f}_{k}" for f in ("colour", "position") for k in ("name", "next", "flip")]
    budget = Budget(stage1_steps=3, stage2_steps=12, batch_size=8, stage1_batch_size=8, eval_per_task=2,
                    eval_batch_size=48)
    plan = [(row, seed) for row in select_rows(DEMO_ROWS) for seed in seeds_for(row, demo=True)]
    assert [(r.name, s) for r, s in plan] == [("full_ft", 0), ("spec_lora_r2", 0), ("lora_r2", 0), ("lora_r2", 1),
                                              ("mixc_e8_r2_instr", 0), ("mixc_e8_r2_instr", 1)]
    assert run_table(out, data, plan, budget, tasks, say=lambda _: None) == []
    usage = routing_usage(out / "runs" / "mixc_e8_r2_instr_s0", data, per_task=2)
    assert sorted(usage["tasks"]) == sorted(tasks)
    for shares in usage["usage"].values():  # every instance picks r = 2 of the E = 8 factors in every layer
        # shares are rounded to 4 decimals: 8 roundings of at most 5e-5 each
        assert len(shares) == 8 and sum(shares) == pytest.approx(2.0, abs=8 * 5e-5)
    report = R.write_report(out, tasks, "cmd", usage)
    by = {r["row"]: r for r in report["rows"]}
    assert set(by) == set(DEMO_ROWS)
    assert by["lora_r2"]["seeds"] == [0, 1] and by["spec_lora_r2"]["seeds"] == [0]
    assert by["mixc_e8_r2_instr"]["E"] == 8 and by["mixc_e8_r2_instr"]["routing"] == "instruction"
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][0]["seen"]["mean"] == report["rows"][0]["seen"]["mean"]
    assert (out / "plots" / "results_families.png").is_file() and (out / "plots" / "results_routing_usage.png").is_file()
    spec = json.loads((out / "runs" / "spec_lora_r2_s0" / "colour_flip" / RECORD).read_text())
    assert "trainer.schedule_steps=2" in spec["overrides"] and "data.tasks=['testbed+colour_flip']" in spec["overrides"]
    config = (out / "runs" / "lora_r2_s0" / "config.yaml").read_text()
    assert "image_pool: 2" in config and "feature_cache:" in config
    records = sorted((out / "runs").rglob(RECORD))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert run_table(out, data, plan, budget, tasks, say=lambda _: None) == []  # resumed: nothing retrained
    assert [p.stat().st_mtime_ns for p in records] == stamps


def test_calibration_script_trains_a_base_and_one_row_and_logs_per_task_accuracy(tmp_path):
    """scripts/testbed_calibrate.py at a tiny size: trains the base, then full fine-tuning on two tasks; the
    logged means are recomputed here from the scorer's per-task counts."""
    import importlib.util

    from mixlora.data.testbed import make_testbed

    spec = importlib.util.spec_from_file_location("testbed_calibrate", ROOT / "scripts" / "testbed_calibrate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data, out = tmp_path / "data", tmp_path / "out"
    make_testbed(data, train_images=40, test_images=24, train_per_task=8, test_per_task=3, stage1_size=24,
                 progress=False)
    args = ["probe", "--data", str(data), "--out", str(out), "--stage1", "2", "--stage1-batch", "4", "--steps", "2",
            "--batch", "4", "--eval-per-task", "3", "--tasks", "colour_name,position_flip"]
    assert script.main(args) == 0
    record = json.loads((out / "calibration.jsonl").read_text().splitlines()[-1])
    assert record["steps"] == 2 and record["row"] == "full_ft" and set(record["seen_tasks"]) == {"colour_name",
                                                                                               "position_flip"}
    run = out / "runs" / "probe_s0"
    assert "data.tasks=['testbed+colour_name','testbed+position_flip']" in json.loads((run / RECORD).read_text())[
        "overrides"]
    for split in SPLITS:
        # The scorer's raw counts (the scorer itself is tested against the official rules elsewhere).
        per_task = json.loads((run / "eval" / split / "metrics.json").read_text())["scores"]["per_task"]
        expected = {t: 100 * per_task[f"testbed+{t}"]["correct"] / per_task[f"testbed+{t}"]["count"]
                    for t in ("colour_name", "position_flip")}
        assert all(per_task[f"testbed+{t}"]["count"] == 3 for t in expected)
        assert record[f"{split}_tasks"] == pytest.approx(expected)
        assert record[split] == pytest.approx(round(sum(expected.values()) / 2, 1))
    # No base, no --stage1: a clear error (argparse exit 2) instead of a crash.
    with pytest.raises(SystemExit) as exit_info:
        script.main(["again", "--data", str(data), "--out", str(tmp_path / "empty")])
    assert exit_info.value.code == 2


def test_table_in_worker_processes_matches_sequential_runs_and_keeps_going_past_a_failure(tmp_path):
    """--workers 2: each (row, seed) trains in a spawned worker with one torch thread, its output in its own log;
    a run that fails (an invalid override) is reported with its log and the other finishes. Reference: the same
    run trained here, sequentially, with one thread: same code, seed, data and thread count means the same
    floating-point operations in the same order, so the trained factors must be bit-identical."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from mixlora.data.testbed import make_testbed
    from mixlora.testbed.recipe import Budget, run_row, run_table

    data, out = tmp_path / "data", tmp_path / "out"
    make_testbed(data, train_images=40, test_images=24, train_per_task=8, test_per_task=2, stage1_size=24,
                 tasks=["colour_name", "colour_flip"], progress=False)
    tasks = ["testbed+colour_name", "testbed+colour_flip"]
    budget = Budget(stage1_steps=3, stage2_steps=6, batch_size=8, stage1_batch_size=8, eval_per_task=2,
                    eval_batch_size=48)
    lora = BY_NAME["lora_r2"]
    broken = dataclasses.replace(lora, name="broken", overrides=(*lora.overrides, "adapter.rank=-1"))
    said = []
    failed = run_table(out, data, [(broken, 0), (lora, 0)], budget, tasks, keep_going=True,
                       say=said.append, workers=2)
    assert len(failed) == 1 and failed[0].startswith("broken seed 0") and "rank" in failed[0]
    assert str(out / "runs" / "broken_s0.log") in failed[0]
    run = out / "runs" / "lora_r2_s0"
    assert (run / "eval" / "metrics.json").is_file() and (run / RECORD).is_file()
    assert "Training finished" in (out / "runs" / "lora_r2_s0.log").read_text()  # the run's output is in its log
    assert sum("done] lora_r2 seed 0" in line for line in said) == 1
    alone = dataclasses.replace(lora, name="lora_r2_alone")  # the same run, under another folder name
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_row(alone, 0, out, data, budget, tasks, say=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    parallel = load_file(str(out / "runs" / "lora_r2_s0" / "adapter_model.safetensors"))
    sequential = load_file(str(out / "runs" / "lora_r2_alone_s0" / "adapter_model.safetensors"))
    assert parallel.keys() == sequential.keys() and parallel
    assert all(torch.equal(parallel[k], sequential[k]) for k in parallel)


def test_cli_rejects_zero_workers(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "mixlora.testbed", "table", str(tmp_path), "--workers", "0"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--workers must be >= 1" in bad.stderr
