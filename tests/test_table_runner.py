"""The table runner (`python -m mixlora.tables`) and its wrappers (scripts/table*.sh, scripts/sweep.sh): dry runs
print one train and one eval command per row with the overrides passed through; row patterns, finished runs,
Table 2's and the routing table's own overrides and the sweep's grid; bad values; real runs on the tiny stack
(one row in the default run, every row in the slow tests); Table 2's aggregation checked on fixture runs.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiment_rows import EXPECTED, ROOT, SEEN, TINY, WRAPPERS, clean_env, make_suite, tables
from mixlora.tables.rows import TABLES


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_suite(tmp_path_factory)


# ---------------------------------------------------------------------------------------------- table runner
def script(name: str, *args, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run the wrapper scripts/<name> from the repository root with the test's Python, eval on the CPU."""
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True,
                          env=clean_env(PY=sys.executable, EVAL_DEVICE="cpu", **(env or {})), cwd=ROOT,
                          timeout=timeout)


def commands(stdout: str) -> list[tuple[str, str, list[str]]]:
    """(row or "", kind, argv) of every command the runner printed ("[row] train: ...", "aggregate: ...")."""
    out = []
    for line in stdout.splitlines():
        m = re.match(r"^(?:\[(?P<row>[\w.]+)\] )?(?P<kind>train|eval|aggregate)[^:]*: (?P<cmd>.*)$", line)
        if m and not m["cmd"].startswith("skipped"):
            out.append((m["row"] or "", m["kind"], shlex.split(m["cmd"])))
    return out


def seen_eval(folder: Path) -> Path:
    for key in SEEN:
        (folder / f"{key}.jsonl").touch()
    return folder


@pytest.mark.parametrize("key", sorted(WRAPPERS))
def test_table_script_dry_run_prints_one_train_and_one_eval_per_row(key, tmp_path):
    # through each wrapper once: its environment settings reach the runner
    env = {"DRY_RUN": "1", "NPROC": "2", "RESULTS": str(tmp_path / "results"),
           "SEEN_EVAL": str(seen_eval(tmp_path))}
    proc = script(WRAPPERS[key], tmp_path / "out", "model.paths.llm=/ckpt/llm", "trainer.max_steps=3", "--",
                  "limit=2", "task.mme.path=/data/mme", env=env)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    expected = list(TABLES[key].rows)
    assert [row for row, kind, _ in cmds if kind == "train"] == expected  # every row once, in the table's order
    assert [row for row, kind, _ in cmds if kind == "eval"] == expected
    for row, kind, argv in cmds:
        if kind == "train":
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
            assert argv[:8] == [*launcher, "-m", "mixlora.train.cli"]  # the package's entry point (= train.py)
            assert argv[8:11] == [f"experiment={row}", f"output_dir={tmp_path / 'out' / row}", "resume=true"]
            assert argv[11:13] == ["model.paths.llm=/ckpt/llm", "trainer.max_steps=3"]  # passed through, in order
            assert "limit=2" not in argv
        elif kind == "eval":
            assert argv[:5] == [sys.executable, "-m", "mixlora.tasks.cli", f"run={tmp_path / 'out' / row}",
                                "device=cpu"]  # the package's entry point (= eval.py)
            assert argv[-2:] == ["limit=2", "task.mme.path=/data/mme"]  # after the table's own, so they win
            assert "trainer.max_steps=3" not in argv
    aggregate = [argv for _, kind, argv in cmds if kind == "aggregate"]
    tool = "mixlora.tables.aggregate_table2" if key == "table2" else "mixlora.tables.aggregate"
    assert aggregate == [[sys.executable, "-m", tool, *[str(tmp_path / "out" / r) for r in expected],
                          "--out", str(tmp_path / "results")]]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_table_runner_rows_filter_single_trainer_and_finished_runs(tmp_path):
    finished = tmp_path / "out/t1_lora_r4"
    finished.mkdir(parents=True)
    (finished / "run.json").write_text(json.dumps({"format": "mixlora-run/1", "status": "finished"}, indent=2))
    proc = tables("table1", tmp_path / "out", "trainer=single", "--dry-run", "--rows", "t1_lora_r4, t1c_*_r8")
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    assert [(row, kind) for row, kind, _ in cmds if kind != "aggregate"] == [
        ("t1_lora_r4", "eval"), ("t1c_mixlora_e16_r8", "train"), ("t1c_mixlora_e16_r8", "eval"),
        ("t1c_mixlora_e32_r8", "train"), ("t1c_mixlora_e32_r8", "eval")]
    assert "[t1_lora_r4] train: skipped" in proc.stdout  # finished: evaluated, not trained again
    train = next(argv for _, kind, argv in cmds if kind == "train")
    assert train[:3] == [sys.executable, "-m", "mixlora.train.cli"]  # trainer=single: one plain process, no torchrun
    # --rows may be repeated; options may come between the overrides
    both = tables("table1", tmp_path / "out", "--rows", "t1c_*_r8", "trainer=single", "--dry-run", "--rows",
                  "t1_lora_r4", "--", "limit=1")
    assert both.returncode == 0, both.stderr
    assert commands(both.stdout) == [(r, k, [*a, "limit=1"] if k == "eval" else a) for r, k, a in cmds]
    bad = tables("table1", tmp_path / "out", "--dry-run", "--rows", "t1_lora_r4 t9_*")
    assert bad.returncode == 2 and "--rows: 't9_*' matches no row of table1" in bad.stderr, bad.stderr
    no_out = tables("table1", "model=tiny", "--dry-run")
    assert no_out.returncode == 2 and "the first argument must be OUT" in no_out.stderr
    bad_nproc = tables("table1", tmp_path / "out", "--dry-run", "--nproc", "four")
    assert bad_nproc.returncode == 2 and "--nproc must be a positive integer" in bad_nproc.stderr


def test_wrappers_read_their_settings_from_the_environment_and_refuse_bad_ones(tmp_path):
    proc = script("table1.sh", tmp_path / "out", "trainer=single", env={"DRY_RUN": "1", "ROWS": "t1_lora_r4"})
    assert proc.returncode == 0 and [r for r, k, _ in commands(proc.stdout) if k == "train"] == ["t1_lora_r4"]
    for env, message in [({"ROWS": "t1_lora_r4 t9_*"}, "ROWS: 't9_*' matches no row of table1"),
                         ({"NPROC": "four"}, "NPROC must be a positive integer"),
                         ({"KEEP_GOING": "yes"}, "KEEP_GOING must be 0 or 1, got 'yes'"),
                         ({"LAUNCHER": "pbs"}, "LAUNCHER must be one of local, submitit_local, slurm")]:
        bad = script("table1.sh", tmp_path / "out", env={"DRY_RUN": "1", **env})
        assert bad.returncode == 2 and message in bad.stderr, (env, bad.stderr)
    no_out = script("table1.sh", "model=tiny", env={"DRY_RUN": "1"})
    assert no_out.returncode == 2 and "the first argument must be OUT" in no_out.stderr
    # an option on the command line wins over the environment
    proc = script("table1.sh", tmp_path / "out", "--rows", "t1_lora_r2", env={"DRY_RUN": "1", "ROWS": "t9_*"})
    assert proc.returncode == 0 and [r for r, k, _ in commands(proc.stdout) if k == "eval"] == ["t1_lora_r2"]


def test_table2_dry_run_scores_each_specialist_on_its_own_task(tmp_path):
    args = ["table2", tmp_path / "out", "--dry-run", "--seen-eval", seen_eval(tmp_path), "--rows",
            "t2_lora_specialist_r4_pacs t1_lora_r16"]
    proc = tables(*args, "--seen-tasks", "pacs=SynthScenes+*,SynthShapes+color_name")
    assert proc.returncode == 0, proc.stderr
    cmds = {(row, kind): argv for row, kind, argv in commands(proc.stdout)}
    spec_train = cmds[("t2_lora_specialist_r4_pacs", "train")]
    assert spec_train[-1] == "data.tasks=['SynthScenes+*','SynthShapes+color_name']"
    assert not any(a.startswith("data.tasks") for a in cmds[("t1_lora_r16", "train")])
    spec_eval = cmds[("t2_lora_specialist_r4_pacs", "eval")]
    assert "tasks=[seen_pacs]" in spec_eval and f"+task.seen_pacs.path={tmp_path}/pacs.jsonl" in spec_eval
    assert "+task.seen_pacs._target_=mixlora.tasks.classification.ClassificationTask" in spec_eval
    assert f"output_dir={tmp_path}/out/t2_lora_specialist_r4_pacs/seen" in spec_eval  # not over Table 1's eval/
    multi_eval = cmds[("t1_lora_r16", "eval")]
    assert f"tasks=[{','.join('seen_' + k for k in SEEN)}]" in multi_eval
    missing = tables("table2", tmp_path / "out", "--dry-run")
    assert missing.returncode == 2 and "--seen-eval is not set" in missing.stderr
    (tmp_path / "coco.jsonl").unlink()  # the specialist needs pacs.jsonl only, the multi-task row all six
    no_coco = tables(*args)
    assert no_coco.returncode == 2 and "has no coco.jsonl" in no_coco.stderr
    assert tables(*args[:-1], "t2_lora_specialist_r4_pacs").returncode == 0
    bad_key = tables(*args[:-1], "t2_lora_specialist_r4_pacs", "--seen-tasks", "vqa=x")
    assert bad_key.returncode == 2 and "--seen-tasks key 'vqa' is not a seen task" in bad_key.stderr
    through_env = script("table2.sh", tmp_path / "out", env={"DRY_RUN": "1", "SEEN_EVAL": ""})
    assert through_env.returncode == 2 and "SEEN_EVAL is not set" in through_env.stderr


def test_routing_runner_gives_task_definitions_to_the_task_rows_only(tmp_path):
    proc = tables("routing", tmp_path / "out", "--dry-run", "--task-definitions", tmp_path / "defs.json")
    assert proc.returncode == 0, proc.stderr
    with_defs = sorted(row for row, kind, argv in commands(proc.stdout)
                       if kind == "train" and f"data.task_definitions={tmp_path / 'defs.json'}" in argv)
    assert with_defs == ["routing_c_task_e32_r4", "routing_task_e32_r4"]
    # only the routing table has task-routed rows, so only it takes the option
    other = tables("table1", tmp_path / "out", "--dry-run", "--task-definitions", tmp_path / "defs.json")
    assert other.returncode == 2 and "unrecognized arguments: --task-definitions" in other.stderr


def test_sweep_dry_run_builds_the_grid_and_the_slurm_variant(tmp_path):
    env = {"DRY_RUN": "1", "FACTORS": "16,32", "RANKS": "2,4", "VARIANTS": "released,corrected,lora",
           "LORA_RANKS": "4,8"}
    proc = script("sweep.sh", tmp_path / "sw", "trainer.max_steps=5", "--", "limit=3", env=env)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    mix, lora_grid = [argv for _, kind, argv in cmds if kind == "train"]
    common = [sys.executable, "-m", "mixlora.train.cli", "--multirun", "experiment=paper_base", "resume=true",
              f"hydra.sweep.dir={tmp_path / 'sw'}"]
    assert mix[:7] == common and lora_grid[:7] == common
    assert mix[7:] == ["adapter=mixlora_released,mixlora", "adapter.num_factors=16,32", "adapter.rank=2,4",
                       'adapter.alpha="${mul:2,${adapter.num_factors}}"',
                       "hydra.sweep.subdir=${hydra:runtime.choices.adapter}_e${adapter.num_factors}_r${adapter.rank}",
                       "trainer.max_steps=5"]
    assert lora_grid[7:] == ["adapter=lora", "adapter.rank=4,8", "hydra.sweep.subdir=lora_r${adapter.rank}",
                             "trainer.max_steps=5"]
    jobs = [f"{a}_e{E}_r{r}" for a in ("mixlora_released", "mixlora") for E in (16, 32) for r in (2, 4)]
    jobs += ["lora_r4", "lora_r8"]
    assert [row for row, kind, _ in cmds if kind == "eval"] == jobs
    assert all(argv[-1] == "limit=3" for _, kind, argv in cmds if kind == "eval")
    slurm = script("sweep.sh", tmp_path / "sw", env={"DRY_RUN": "1", "LAUNCHER": "slurm"})
    assert slurm.returncode == 0, slurm.stderr
    assert "hydra/launcher=slurm" in next(argv for _, kind, argv in commands(slurm.stdout) if kind == "train")
    for bad, message in [({"RANKS": "2,16"}, "r=16, not below FACTORS' E=16"), ({"ALPHA": "E"}, "ALPHA must be"),
                         ({"VARIANTS": "dense"}, "'dense' is not one of"), ({"LAUNCHER": "pbs"}, "LAUNCHER must")]:
        proc = script("sweep.sh", tmp_path / "sw", env={"DRY_RUN": "1", **bad})
        assert proc.returncode == 2 and message in proc.stderr, (bad, proc.stderr)
    # The default grid is Table 1's: E in {16, 32}, r in {2, 4, 8}, LoRA r in {2, ..., 32}.
    default = tables("sweep", tmp_path / "sw", "--dry-run", "--variants", "released,lora")
    mix, lora_grid = [argv for _, kind, argv in commands(default.stdout) if kind == "train"]
    assert mix[7:10] == ["adapter=mixlora_released", "adapter.num_factors=16,32", "adapter.rank=2,4,8"]
    assert lora_grid[7:9] == ["adapter=lora", "adapter.rank=2,4,8,16,32"]
    bad = tables("sweep", tmp_path / "sw", "--dry-run", "--alpha", "E")
    assert bad.returncode == 2 and "--alpha must be 2E" in bad.stderr


def local_overrides(suite: Path) -> list[str]:
    """Train overrides running a table's rows on the tiny stack for one step at micro-batch 4."""
    return [*TINY, f"data.annotations={suite / 'train.json'}", f"data.image_folder={suite / 'images'}",
            "data.generate=null", "logger=disabled", "trainer.progress_bar=false", "trainer.micro_batch_size=4",
            "trainer.global_batch_size=4", "trainer.max_steps=1"]


def tiny_eval(suite: Path) -> list[str]:
    return ["--", "tasks=[pope]", "limit=1", f"data_root={suite}", "progress=false"]


def test_one_row_runs_end_to_end_through_the_table_runner(suite, tmp_path):
    proc = tables("table1", tmp_path / "out", "--rows", "t1_lora_r2", "--results", tmp_path / "results",
                  *local_overrides(suite), *tiny_eval(suite), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "out/t1_lora_r2"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 1
    assert json.loads((run_dir / "adapter_config.json").read_text())["rank"] == 2
    assert list(json.loads((run_dir / "eval/metrics.json").read_text())["tasks"]) == ["pope"]
    with open(tmp_path / "results/results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["run"], r["method"], r["r"]) for r in table] == [("t1_lora_r2", "LoRA", "2")]
    assert table[0]["pope"] != ""  # POPE F1 of the run
    assert not any((tmp_path / "out").glob("t1_lora_r4*"))  # other rows untouched


# ---------------------------------------------------------------------------------------------- table 2 table
def _table2_aggregate():
    import mixlora.tables.aggregate_table2 as mod

    return mod


def fake_seen_run(root: Path, name: str, adapter: dict, scores: dict, tasks=None,
                  builder: str = "mixlora.model.tiny.build_tiny_llava") -> Path:
    run_dir = root / name
    (run_dir / "seen/eval").mkdir(parents=True)
    config = {"adapter": adapter, "data": {"tasks": tasks}, "model": {"builder": {"_target_": builder}}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"tasks": {f"seen_{k}": {"headline": {"accuracy": v}} for k, v in scores.items()}}
    (run_dir / "seen/eval/metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_table2_aggregate_merges_specialists_and_averages_six_tasks(tmp_path):
    agg = _table2_aggregate()
    lora4 = {"kind": "lora", "rank": 4}
    specialists = [fake_seen_run(tmp_path, f"spec_{k}", lora4, {k: 10.0 * (i + 1)}, tasks=[f"{k}+*"])
                   for i, k in enumerate(SEEN)]
    multi = fake_seen_run(tmp_path, "mix", {"kind": "mixlora", "num_factors": 16, "rank": 4, "cfs": "released",
                                            "routing_tokens": "all", "decode_routing": "per_step"},
                          {k: 50.0 for k in SEEN}, builder="mixlora.build.build_pretrained_llava")
    partial = fake_seen_run(tmp_path, "lora16", {"kind": "lora", "rank": 16}, {"coco": 70.0})
    out = agg.main([*map(str, specialists), str(multi), str(partial), "--out", str(tmp_path / "t2")])
    assert [(r["method"], r["r"], r["variant"]) for r in out] == [
        ("LoRA_Specialist", 4, ""), ("MixLoRA", 4, "released"), ("LoRA", 16, "")]
    assert out[0]["scores"] == {k: 10.0 * (i + 1) for i, k in enumerate(SEEN)}
    assert out[0]["avg"] == pytest.approx(35.0)  # (10 + 20 + ... + 60) / 6
    assert out[1]["avg"] == pytest.approx(50.0) and out[2]["avg"] is None  # one task only: no average
    table = (tmp_path / "t2/results.md").read_text()
    # paper's MixLoRA E16/r4 (ScienceQA 60.67, AVG 67.17) only beside the paper-stack run
    mix_line = next(line for line in table.splitlines() if line.startswith("| MixLoRA |"))
    assert "50.00 (60.67)" in mix_line and "50.00 (67.17)" in mix_line
    assert "(" not in next(line for line in table.splitlines() if line.startswith("| LoRA_Specialist |"))
    with open(tmp_path / "t2/results.csv") as f:
        assert [r["AVG"] for r in csv.DictReader(f)] == ["35.00", "50.00", ""]
    twice = fake_seen_run(tmp_path, "spec_pacs_again", lora4, {"pacs": 1.0}, tasks=["pacs+*"])
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/table2_aggregate.py"), str(specialists[-1]),
                           str(twice), "--out", str(tmp_path / "t2b")], capture_output=True, text=True)
    assert proc.returncode == 2 and "were both scored on ['pacs']" in proc.stderr


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def shared_out(tmp_path_factory):
    """One OUT for all tables, as docs/reproduce.md recommends: rows two tables share train once."""
    return tmp_path_factory.mktemp("tables")


def check_rows(out: Path, rows_run: list[str]) -> None:
    for row in rows_run:
        assert json.loads((out / row / "summary.json").read_text())["steps"] == 1, row


@pytest.mark.slow
@pytest.mark.parametrize("key", ["table1", "cfs", "routing"])
def test_table_runner_runs_every_row_end_to_end_on_the_tiny_stack(key, suite, shared_out, tmp_path):
    options = ["--results", tmp_path / "results"]
    if key == "routing":
        options += ["--task-definitions", suite / "task_definitions.json"]
    proc = tables(key, shared_out, *options, *local_overrides(suite), *tiny_eval(suite), timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = list(TABLES[key].rows)
    check_rows(shared_out, expected)
    with open(tmp_path / "results/results.csv") as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    assert list(table) == expected
    for row in expected:
        adapter = EXPECTED[row][0]
        assert table[row]["method"] == {"lora": "LoRA", "mixlora": "MixLoRA"}[adapter.kind]
        assert table[row]["r"] == str(adapter.rank)
        if adapter.kind == "mixlora":
            variant = "released" if adapter.routing_tokens == "all" else "corrected"
            assert table[row]["variant"].startswith(variant), row
            assert ("IFS only" in table[row]["variant"]) == (adapter.cfs == "none"), row
            assert (f"{adapter.routing_source} routing" in table[row]["variant"]) == (
                adapter.routing_source != "instance"), row


@pytest.mark.slow
def test_table2_runner_runs_every_row_end_to_end_on_the_tiny_stack(suite, shared_out, tmp_path):
    # Seen tasks of the synthetic suite standing in for the six Vision-Flan ones; their held-out sets here are
    # the training records in the released evaluation format (a smoke run: the numbers mean nothing).
    stand_in = {"scienceqa": "SynthGlyphs+arithmetic", "coco": "SynthCaptions+caption_matching",
                "fairface": "SynthShapes+color_name", "inaturalist": "SynthShapes+shape_classification",
                "stvqa": "SynthGlyphs+word_transcription", "pacs": "SynthScenes+background_classification"}
    records = json.loads((suite / "train.json").read_text())
    seen = tmp_path / "seen"
    seen.mkdir()
    for key, task in stand_in.items():
        lines = [json.dumps({"unique_id": f"{key}-{i}", "prompt": r["conversations"][0]["value"].replace(
            "<image>", "").strip(), "target": r["conversations"][1]["value"],
            "image_path": str(suite / "images" / r["image"])})
            for i, r in enumerate(x for x in records if x["task_name"] == task)]
        (seen / f"{key}.jsonl").write_text("\n".join(lines) + "\n")
    seen_tasks = [f"--seen-tasks={k}={t}" for k, t in stand_in.items()]
    proc = tables("table2", shared_out, "--results", tmp_path / "results", "--seen-eval", seen, *seen_tasks,
                  *local_overrides(suite), "--", "limit=1", "progress=false", timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_rows(shared_out, list(TABLES["table2"].rows))
    with open(tmp_path / "results/results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["method"], r["r"]) for r in table] == [("LoRA_Specialist", "4"), ("LoRA_Specialist", "16"),
                                                     ("LoRA", "4"), ("LoRA", "16"), ("MixLoRA", "4"),
                                                     ("MixLoRA", "4")]
    assert all(r[column] != "" for r in table for column, _ in SEEN.values())  # every cell scored
    spec = json.loads((shared_out / "t2_lora_specialist_r4_pacs/seen/eval/metrics.json").read_text())
    assert list(spec["tasks"]) == ["seen_pacs"]


@pytest.mark.slow
def test_sweep_trains_and_evaluates_a_small_grid(suite, tmp_path):
    env = {"FACTORS": "8", "RANKS": "2", "VARIANTS": "released,corrected,lora", "LORA_RANKS": "2"}
    proc = script("sweep.sh", tmp_path / "sw", *local_overrides(suite), *tiny_eval(suite), env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = {job: json.loads((tmp_path / "sw" / job / "adapter_config.json").read_text())
             for job in ("mixlora_released_e8_r2", "mixlora_e8_r2", "lora_r2")}
    assert (saved["mixlora_released_e8_r2"]["cfs"], saved["mixlora_e8_r2"]["cfs"]) == ("released", "paper")
    assert saved["mixlora_released_e8_r2"]["alpha"] == saved["mixlora_e8_r2"]["alpha"] == 16.0  # 2E for both
    assert saved["lora_r2"]["alpha"] == 4.0
    with open(tmp_path / "sw/results/results.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["mixlora_released_e8_r2", "mixlora_e8_r2", "lora_r2"]
