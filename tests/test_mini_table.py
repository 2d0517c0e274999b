"""scripts/mini_table.py (mean +- std over seeds and the claim verdicts) from fixture run directories, and
scripts/mini_table.sh's row set and dry run."""

import importlib.util
import json
import os
import statistics
import subprocess
from pathlib import Path

import pytest

from test_aggregate import SCORES, fake_run

ROOT = Path(__file__).resolve().parents[1]


def _mini():
    spec = importlib.util.spec_from_file_location("mini_table", ROOT / "scripts/mini_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def seen_run(root, name, adapter, seen, vsr):
    run = fake_run(root, name, adapter, "mixlora.model.tiny.build_tiny_llava", {**SCORES, "vsr": vsr}, 800)
    metrics = json.loads((run / "eval/metrics.json").read_text())
    metrics["tasks"]["seen"] = {"headline": {"average": seen}}
    (run / "eval/metrics.json").write_text(json.dumps(metrics))


def test_rows_are_seed_means_and_verdicts_use_two_standard_errors(tmp_path):
    lora, mix = {"kind": "lora", "rank": 4}, {"kind": "mixlora", "num_factors": 8, "rank": 4, "cfs": "paper",
                                              "routing_tokens": "prompt", "decode_routing": "prefill"}
    for seed, (s_lora, s_mix) in enumerate([(30.0, 40.0), (32.0, 44.0), (34.0, 42.0)]):
        seen_run(tmp_path / "runs", f"lora_r4_s{seed}", lora, s_lora, vsr=20.0)
        seen_run(tmp_path / "runs", f"mixc_e8_r4_s{seed}", mix, s_mix, vsr=20.0 + seed)  # MMAvg +0, +1/7, +2/7
    result = _mini().main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-plot", "--command", "X"])
    row = result["rows"]["mixc_e8_r4"]
    assert row["seeds"] == [0, 1, 2] and row["seen"] == pytest.approx(42.0) and row["seen_std"] == pytest.approx(2.0)
    assert result["rows"]["lora_r4"]["seen"] == pytest.approx(32.0)
    seen = next(c for c in result["claims"] if c["metric"] == "seen")
    # diff 10, SE = sqrt(4/3 + 4/3) = 1.633: far beyond 2 SE
    assert seen["claim"] == "MixLoRA > LoRA at equal rank" and seen["diff"] == pytest.approx(10.0)
    assert seen["se"] == pytest.approx((8 / 3) ** 0.5) and seen["verdict"] == "holds"
    mmavg = next(c for c in result["claims"] if c["metric"] == "mmavg")
    se = (statistics.stdev([0, 1 / 7, 2 / 7]) ** 2 / 3) ** 0.5
    assert mmavg["diff"] == pytest.approx(1 / 7) and mmavg["se"] == pytest.approx(se)
    assert mmavg["verdict"] == "not distinguishable"  # 0.143 < 2 x 0.082
    text = (tmp_path / "out/mini_table.md").read_text()
    assert "42.00 ± 2.00" in text and "Command: `X`" in text


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="run scripts/mini_table.sh first"):
        _mini().main([str(tmp_path), "--out", str(tmp_path / "out")])


def sh(*args, **env):
    return subprocess.run(["bash", str(ROOT / "scripts/mini_table.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT)


def test_dry_run_lists_one_train_and_eval_per_row_and_seed(tmp_path):
    p = sh(str(tmp_path / "m"), DRY_RUN="1", SEEDS="0 5", ROWS="lora_r2 ifsc_e16_r4 randc_e8_r4 mixrel_e16_r8")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("tasks=[mme,cvbench,pope,textvqa,vsr,snli_ve,cifar10,cifar100,mnist,seen]") == 8
    trains = [line for line in p.stdout.splitlines() if line.startswith("+ ") and " train.py adapter=" in line]
    evals = [line for line in p.stdout.splitlines() if line.startswith("+ ") and " eval.py " in line]
    assert len(trains) == len(evals) == 8
    assert "adapter=lora adapter.rank=2 seed=0 " in trains[0] and "seed=5" in trains[1]
    assert "adapter.num_factors=16 adapter.rank=4 adapter.cfs=none" in trains[2]
    assert "adapter.routing_source=random" in trains[4]
    assert "adapter=mixlora_released adapter.num_factors=16 adapter.rank=8" in trains[6]
    assert all("data.annotations=data/synthetic/stage2.json" in t for t in trains)


def test_every_row_is_a_valid_adapter_config(tmp_path):
    from mixlora import AdapterConfig
    from mixlora.train import compose_config

    p = sh(str(tmp_path / "m"), DRY_RUN="1", SEEDS="0")
    assert p.returncode == 0, p.stderr
    trains = [line.split() for line in p.stdout.splitlines() if line.startswith("+ ") and " train.py adapter=" in line]
    assert len(trains) == 3 + 5 + 5 + 2 + 2  # LoRA r2/4/8; corrected and released E8/r2,4 + E16/r2,4,8; IFS; random
    for words in trains:
        overrides = [w for w in words if w.startswith("adapter")]
        adapter = AdapterConfig.coerce(compose_config(overrides).adapter)  # raises on r >= E and bad values
        assert adapter.kind == overrides[0].split("=")[1].split("_")[0]


def test_unknown_row_is_refused():
    p = sh("/tmp/unused", DRY_RUN="1", ROWS="lora_r3")
    assert p.returncode == 2 and "unknown row 'lora_r3'" in p.stderr
