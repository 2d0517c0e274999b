"""The table runner's own machinery (mixlora/tables/): the generated experiment files are current, row selection,
bad input, --keep-going and resume on real tiny runs, the submitit settings as submitit renders them, and two rows
submitted through submitit's local executor, collected and aggregated.

References: the experiment files on disk (the generator must reproduce them byte for byte), hand-written
pattern/row expectations, submitit's own sbatch rendering, and the run directories the jobs leave behind.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_table_runner import ROOT, commands, local_overrides, suite, tables, tiny_eval  # noqa: E402,F401

from mixlora.tables import generate  # noqa: E402
from mixlora.tables.rows import TABLES, Row, select_rows  # noqa: E402

CONFIGS = ROOT / "configs/experiment"


# ---------------------------------------------------------------------------------------------- generated files
def test_the_experiment_files_are_what_the_row_table_generates():
    assert generate.differences() == []
    proc = subprocess.run([sys.executable, "-m", "mixlora.tables.generate", "--check"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_the_check_names_stale_missing_and_stray_files_and_writing_fixes_the_first_two(tmp_path):
    for path in CONFIGS.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "t1_lora_r4.yaml").write_text((tmp_path / "t1_lora_r4.yaml").read_text().replace("rank: 4", "rank: 8"))
    (tmp_path / "cfs_ifs_e16_r2.yaml").unlink()
    (tmp_path / "t1_lora_r64.yaml").write_text("# @package _global_\n")
    (tmp_path / "tiny_extra.yaml").write_text("# @package _global_\n")  # not named like a paper row: not stray
    check = [sys.executable, "-m", "mixlora.tables.generate", "--check", "--dir", str(tmp_path)]
    proc = subprocess.run(check, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    named = sorted(line[len(f"{tmp_path}/"):] for line in proc.stderr.splitlines() if line.startswith(f"{tmp_path}/"))
    assert named == ["cfs_ifs_e16_r2.yaml: missing", "t1_lora_r4.yaml: differs from its row",
                     "t1_lora_r64.yaml: stray (named like a paper row, but no row of mixlora/tables/rows.py)"]
    assert generate.write(tmp_path) == [tmp_path / "t1_lora_r4.yaml", tmp_path / "cfs_ifs_e16_r2.yaml"]
    assert (tmp_path / "t1_lora_r4.yaml").read_text() == (CONFIGS / "t1_lora_r4.yaml").read_text()
    assert [p.split(":")[0] for p in generate.differences(tmp_path)] == ["t1_lora_r64.yaml"]


def test_bad_row_labels_are_refused():
    with pytest.raises(ValueError, match="needs 0 < r < E, got E=8 r=8"):
        Row("x", "mixlora", "released", E=8, r=8, alpha="2E")
    with pytest.raises(ValueError, match="LoRA has no variant"):
        Row("x", "lora", "released", r=4)
    with pytest.raises(ValueError, match="seen must be one of"):
        Row("x", "lora", r=4, seen="mnist")


# ---------------------------------------------------------------------------------------------- selection, input
def test_row_patterns_select_in_the_table_order_and_each_must_match():
    t1 = TABLES["table1"]
    names = lambda patterns: [r.name for r in select_rows(t1, patterns)]  # noqa: E731
    assert names(None) == list(t1.rows)
    assert names(["t1c_*_r8, t1_lora_r4"]) == ["t1_lora_r4", "t1c_mixlora_e16_r8", "t1c_mixlora_e32_r8"]
    assert names(["t1_lora_r?", "t1_lora_r4"]) == ["t1_lora_r2", "t1_lora_r4", "t1_lora_r8"]  # no repeats
    with pytest.raises(ValueError, match=r"ROWS: 'cfs_\*' matches no row of table1"):
        select_rows(t1, ["t1_lora_r4 cfs_*"], source="ROWS")
    with pytest.raises(ValueError, match="--rows names no row"):
        select_rows(t1, [" , "])


@pytest.mark.parametrize("args,message", [
    (["table9", "out"], "unknown table 'table9'; one of table1, cfs, routing, table2, sweep"),
    (["table1"], "missing OUT"),
    (["table1", "--rows"], "argument --rows: expected one argument"),
    (["table1", "out", "--dry-run", "--launcher", "pbs"], "--launcher must be one of local, submitit_local, slurm"),
    (["table1", "out", "--dry-run", "--launcher-arg", "partition=gpu"], "--launcher-arg needs --launcher"),
    (["table1", "out", "--dry-run", "--launcher", "slurm", "--launcher-arg", "gpu"], "'gpu' is not KEY=VALUE"),
    (["table1", "out", "--dry-run", "--launcher", "slurm", "--launcher-arg", "tasks_per_node=4"],
     "nodes and tasks_per_node must be 1"),
    (["table1", "out", "--dry-run", "--seen-eval", "x"], "unrecognized arguments: --seen-eval"),
    (["table2", "out", "--dry-run", "--seen-tasks", "pacs"], "--seen-tasks entry 'pacs' is not KEY=PATTERN"),
    (["table2", "out", "--dry-run", "--seen-tasks", "pacs=x"], "--seen-eval is not set"),
    (["sweep", "out", "--dry-run", "--factors", "16,x"], "--factors must be a comma-separated list of positive"),
    (["sweep", "out", "--dry-run", "--variants", ","], "--variants is empty"),
])
def test_bad_input_is_refused_with_a_message_and_status_2(args, message, tmp_path):
    proc = tables(*args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_names_each_tables_own_options():
    main = subprocess.run([sys.executable, "-m", "mixlora.tables", "--help"], capture_output=True, text=True)
    assert main.returncode == 0 and "python -m mixlora.tables TABLE OUT" in main.stdout
    helps = {key: tables(key, "--help") for key in TABLES}
    assert all(p.returncode == 0 and "--keep-going" in p.stdout and "--launcher" in p.stdout for p in helps.values())
    assert [key for key, p in helps.items() if "--seen-eval" in p.stdout] == ["table2"]
    assert [key for key, p in helps.items() if "--task-definitions" in p.stdout] == ["routing"]


# ---------------------------------------------------------------------------------------------- submitit settings
def test_slurm_jobs_take_the_sweep_launcher_file_with_one_task_holding_the_gpus(tmp_path, monkeypatch):
    from mixlora.tables.submit import launcher_settings, make_executor

    (tmp_path / "bin").mkdir()  # submitit builds a SLURM executor only where it finds srun
    (tmp_path / "bin/srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin/srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    settings = launcher_settings("slurm", 2, {"partition": "gpu", "timeout_min": 90})
    # configs/hydra/launcher/slurm.yaml: 8 CPUs per GPU, 256 GB, 3 requeues; one task per job here, not per GPU
    assert {k: settings[k] for k in ("tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes",
                                     "max_num_timeout", "timeout_min", "partition")} == {
        "tasks_per_node": 1, "gpus_per_node": 2, "cpus_per_task": 16, "mem_gb": 256, "nodes": 1,
        "max_num_timeout": 3, "timeout_min": 90, "partition": "gpu"}
    executor = make_executor("slurm", tmp_path / "%j", settings)
    sbatch = executor._executor._make_submission_file_text("true", "uid")  # submitit's own rendering
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --time=90", "#SBATCH --mem=256GB", "#SBATCH --nodes=1"):
        assert line in sbatch, (line, sbatch)
    assert launcher_settings("submitit_local", 4, {})["gpus_per_node"] == 0  # local.yaml: CPU jobs unless told


def test_a_submitted_dry_run_prints_the_jobs_commands_and_writes_nothing(tmp_path):
    proc = tables("cfs", tmp_path / "out", "--dry-run", "--launcher", "slurm", "--nproc", "2", "--rows",
                  "cfs_ifs_e16_r2", "--launcher-arg", "partition=gpu", "model.paths.llm=/ckpt/llm", eval_device=None)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    assert [(row, kind) for row, kind, _ in cmds] == [("cfs_ifs_e16_r2", "train"), ("cfs_ifs_e16_r2", "eval"),
                                                     ("", "aggregate")]
    assert cmds[0][2][:8] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "mixlora.train.cli"]
    assert "device=cuda" in cmds[1][2]  # a SLURM job with GPUs evaluates on them
    assert "submit: 1 job(s) through slurm" in proc.stdout and "gpus_per_node=2" in proc.stdout
    assert "partition=gpu" in proc.stdout and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- real runs
def test_keep_going_aggregates_the_rows_that_worked_and_a_finished_row_is_not_retrained(suite, tmp_path):
    out = tmp_path / "out"
    broken = out / "t1_lora_r2"
    broken.mkdir(parents=True)
    (broken / "metrics.jsonl").write_text('{"step": 1}\n')  # a run directory of some other run: train.py refuses it
    # a one-step schedule: the run ends "finished" (trainer.max_steps alone leaves it "stopped", to be continued)
    args = ["table1", out, "--rows", "t1_lora_r2,t1_lora_r4", "--results", tmp_path / "results",
            *local_overrides(suite), "trainer.schedule_steps=1", *tiny_eval(suite)]
    stop = tables(*args, timeout=300)
    assert stop.returncode != 0 and "[t1_lora_r2] failed" in stop.stderr
    assert not (out / "t1_lora_r4").exists() and not (tmp_path / "results").exists()  # stopped at the first failure
    go_on = tables(*args[:2], "--keep-going", *args[2:], timeout=300)
    assert go_on.returncode == 1, go_on.stdout[-3000:] + go_on.stderr[-3000:]
    assert "table1: 1 row(s) failed: t1_lora_r2" in go_on.stderr
    with open(tmp_path / "results/results.csv") as f:
        assert [(r["run"], r["method"], r["r"]) for r in csv.DictReader(f)] == [("t1_lora_r4", "LoRA", "4")]
    summary = json.loads((out / "t1_lora_r4/summary.json").read_text())
    assert summary["steps"] == 1
    # Run again: the finished row is evaluated, not trained again.
    again = tables(*args[:2], "--rows", "t1_lora_r4", *args[4:], timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[t1_lora_r4] train: skipped" in again.stdout
    assert json.loads((out / "t1_lora_r4/summary.json").read_text()) == summary


def test_two_rows_submitted_through_submitit_local_are_collected_and_aggregated(suite, tmp_path):
    out = tmp_path / "out"
    proc = tables("table1", out, "--launcher", "submitit_local", "--rows", "t1_lora_r2 t1c_mixlora_e16_r2",
                  "--results", tmp_path / "results", *local_overrides(suite), "trainer.schedule_steps=1",
                  *tiny_eval(suite), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submit: 2 job(s) through submitit_local" in proc.stdout
    jobs = sorted(p for p in (out / ".submitit").iterdir() if p.name != "%j")
    assert len(jobs) == 2  # one pickled job per row, each a real process with its own log
    for job in jobs:
        assert list(job.glob("*_submitted.pkl")) and list(job.glob("*_result.pkl"))
    for row, rank in (("t1_lora_r2", 2), ("t1c_mixlora_e16_r2", 2)):
        summary = json.loads((out / row / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 1
        assert json.loads((out / row / "adapter_config.json").read_text())["rank"] == rank
        assert list(json.loads((out / row / "eval/metrics.json").read_text())["tasks"]) == ["pope"]
        assert json.loads((out / row / "run.json").read_text())["status"] == "finished"
    with open(tmp_path / "results/results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["run"], r["method"], r["E"], r["r"], r["variant"]) for r in table] == [
        ("t1_lora_r2", "LoRA", "", "2", ""), ("t1c_mixlora_e16_r2", "MixLoRA", "16", "2", "corrected")]
    assert all(r["pope"] != "" for r in table)
