"""mixlora.tables.aggregate (scripts/aggregate.py) builds the tables from fixture run directories (hand-written, in the formats that
train.py and eval.py write) and puts the paper's numbers beside runs of the paper's stack."""

import csv
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _aggregate():
    import mixlora.tables.aggregate as mod

    return mod


def fake_run(root: Path, name: str, adapter: dict, builder: str, scores: dict, pools: int) -> Path:
    run = root / name
    (run / "eval/mme").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"adapter": adapter, "model": {"builder": {"_target_": builder}}}))
    params = {"pools": {"total": pools, "trainable": pools}, "routers": {"total": 0, "trainable": 0},
              "projector": {"total": 100, "trainable": 100}, "llm": {"total": 5000, "trainable": 0},
              "vision": {"total": 900, "trainable": 0}, "all": {"total": 6000 + pools, "trainable": pools + 100}}
    (run / "summary.json").write_text(json.dumps({"parameters": params, "git_commit": "abc1234"}))
    tasks = {t: {"headline": {"accuracy": v}} for t, v in scores.items() if t not in ("pope", "mme")}
    tasks["pope"] = {"headline": {"f1": scores["pope"], "accuracy": 1.0}}
    tasks["mme"] = {"headline": {"perception": scores["mme"], "cognition": 10.0, "total": scores["mme"] + 10.0}}
    (run / "eval/metrics.json").write_text(json.dumps({"tasks": tasks}))
    (run / "eval/mme/metrics.json").write_text(json.dumps({"scores": {"subtasks": {"color": {"score": 150.0}}}}))
    return run


SCORES = dict(textvqa=10.0, vsr=20.0, snli_ve=30.0, cifar10=40.0, cifar100=50.0, mnist=60.0, pope=70.0, mme=500.0)


def test_tables_and_plots_from_fixture_runs(tmp_path):
    agg = _aggregate()
    lora = fake_run(tmp_path, "lora", {"kind": "lora", "rank": 4}, "mixlora.model.tiny.build_tiny_llava", SCORES, 800)
    mix = fake_run(tmp_path, "mix", {"kind": "mixlora", "num_factors": 16, "rank": 4, "cfs": "released",
                                     "routing_tokens": "all", "decode_routing": "per_step"},
                   "mixlora.build.build_pretrained_llava", {**SCORES, "vsr": 27.0}, 3200)
    rows = agg.main([str(lora), str(mix), "--out", str(tmp_path / "out")])
    assert rows[0]["mmavg"] == pytest.approx(40.0)  # (10+20+30+40+50+60+70) / 7
    assert rows[1]["mmavg"] == pytest.approx(41.0)  # vsr 27 instead of 20
    assert rows[1]["variant"] == "released" and rows[1]["E"] == 16
    assert rows[1]["active"] == 3200 * 4 // 16 + 100 and rows[0]["active"] == 900
    table = (tmp_path / "out/results.md").read_text()
    # the paper's E16/r4 row (Table 1: MMAvg 64.10, MME 1443.82) appears only beside the paper-stack run
    assert "41.00 (64.10)" in table and "510.00 (1443.82)" in table
    lora_line = next(line for line in table.splitlines() if line.startswith("| lora |"))
    assert "(" not in lora_line  # a tiny-stack run gets no paper column
    with open(tmp_path / "out/results.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["lora", "mix"]
    for png in ("datasets", "mme_subtasks", "params_vs_mmavg"):
        assert (tmp_path / f"out/plots/{png}.png").stat().st_size > 1000


def test_unevaluated_run_is_a_clear_error(tmp_path, capsys):
    agg = _aggregate()
    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit):
        agg.main([str(tmp_path / "run"), "--out", str(tmp_path / "o")])
    assert "evaluate it first" in capsys.readouterr().err


def test_variant_labels_follow_the_cfs_formula_and_routing_tokens():
    describe = _aggregate().describe_adapter
    mix = lambda **kw: {"kind": "mixlora", "num_factors": 8, "rank": 2, **kw}  # noqa: E731
    released = dict(cfs="released", routing_tokens="all", decode_routing="per_step")
    corrected = dict(cfs="paper", routing_tokens="prompt", decode_routing="prefill")
    assert describe(mix(**released))["variant"] == "released"
    assert describe(mix(**corrected))["variant"] == "corrected"
    # IFS only (no CFS) of either variant, and the released task-routing row (decodes with the prefill selection)
    assert describe(mix(**{**released, "cfs": "none"}))["variant"] == "released, IFS only"
    assert describe(mix(**{**corrected, "cfs": "none"}))["variant"] == "corrected, IFS only"
    assert describe(mix(**{**released, "decode_routing": "prefill", "routing_source": "task"}))["variant"] == \
        "released, prefill decoding, task routing"
    assert describe(mix(**{**corrected, "routing_source": "random"}))["variant"] == "corrected, random routing"
    assert describe(mix(**{**corrected, "routing_tokens": "all"}))["variant"].startswith("custom (cfs paper")
    assert describe({"kind": "lora", "rank": 4}) == {"method": "LoRA", "E": None, "r": 4, "variant": ""}


def test_the_checkout_script_is_the_package_command(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts/aggregate.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "--out" in proc.stdout, proc.stderr
