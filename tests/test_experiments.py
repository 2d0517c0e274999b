"""The paper's tables as experiments: the row table (mixlora/tables/rows.py), the configs generated from it
(configs/experiment/{t1,t1c,cfs,routing,t2}_*.yaml), the data task filter that the Table 2 specialists use, and the
table runner (`python -m mixlora.tables`) with its wrappers (scripts/table*.sh, scripts/sweep.sh).

The rows come from the row table, but the references are independent of it and of the configs under test: the
expected adapter of every row is computed here from the row's labels (LoRA alpha = 2r; released MixLoRA with
alpha = 2E; the corrected variant at the same alpha), each row's name is checked against its labels, each table's
rows against the paper's layout, and sample counts and averages are computed by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixlora import AdapterConfig
from mixlora.tables.rows import ROWS, TABLES
from mixlora.train import ConfigError, compose_config, run
from mixlora.train.data import select_tasks
from mixlora.train.settings import DataSettings
from mixlora.train.validate import preflight

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results/paper"
TABLE_ROW = re.compile(r"^(t1c?|t2|cfs|routing)_")
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs/experiment").glob("*.yaml"))
TINY = ["model=tiny", "data=synthetic", "trainer=single"]
FACTORS_RANKS = [(E, r) for r in (2, 4, 8) for E in (16, 32)]

# Vision-Flan task names of the six seen tasks (the released code's commented-out `target_tasks` in
# llava_trainer.py). It names no COCO task (that slot holds cinic-10), so the COCO specialist takes every coco+ task.
SEEN = {"scienceqa": ("ScienceQA", "scienceqa+question_answering"), "coco": ("COCO", "coco+*"),
        "fairface": ("FairFace", "fairface+image_classification_age"),
        "inaturalist": ("iNaturalist", "INATURALIST+order_classification"),
        "stvqa": ("ST-VQA", "STVQA+image_question_answer"),
        "pacs": ("PACS", "PACS+elephant_image_category_classification")}


def lora(r: int) -> AdapterConfig:
    return AdapterConfig(kind="lora", rank=r, alpha=2.0 * r, dropout=0.05)


def released(E: int, r: int, **changes) -> AdapterConfig:
    values = dict(kind="mixlora", num_factors=E, rank=r, alpha=2.0 * E, dropout=0.05, cfs="released",
                  router_grad="none", routing_tokens="all", routing_precision="layer", decode_routing="per_step",
                  routing_source="instance")
    return AdapterConfig(**{**values, **changes})


def corrected(E: int, r: int, **changes) -> AdapterConfig:
    values = dict(kind="mixlora", num_factors=E, rank=r, alpha=2.0 * E, dropout=0.05, cfs="paper",
                  router_grad="none", routing_tokens="prompt", decode_routing="prefill", routing_source="instance")
    return AdapterConfig(**{**values, **changes})


def expected_adapter(row) -> AdapterConfig:
    """The adapter a row's labels describe. Task routing of the released variant decodes with the prefill selection
    (a token routed alone would route on itself, not on the definition; train.py and eval.py refuse per-step)."""
    if row.method == "lora":
        return lora(row.r)
    changes = {}
    if not row.cfs:
        changes["cfs"] = "none"
    if row.routing != "instance":
        changes["routing_source"] = row.routing
    if row.routing == "task" and row.variant == "released":
        changes["decode_routing"] = "prefill"
    return {"released": released, "corrected": corrected}[row.variant](row.E, row.r, **changes)


def expected_name(row) -> str:
    """The experiment name that a row's labels spell (the naming the configs, docs and scripts use)."""
    if row.seen is not None:
        return f"t2_lora_specialist_r{row.r}_{row.seen}"
    if row.method == "lora":
        return f"t1_lora_r{row.r}"
    c = "c_" if row.variant == "corrected" else ""
    if not row.cfs:
        return f"cfs_{c}ifs_e{row.E}_r{row.r}"
    if row.routing != "instance":
        return f"routing_{c}{row.routing}_e{row.E}_r{row.r}"
    return f"t1{c.rstrip('_')}_mixlora_e{row.E}_r{row.r}"


# Every paper-stack experiment: name -> (adapter, data.tasks). paper_base trains the default adapter (corrected
# MixLoRA, E16/r4, alpha = 2r).
EXPECTED: dict[str, tuple[AdapterConfig, list | None]] = {"paper_base": (AdapterConfig(dropout=0.05), None)}
EXPECTED.update({name: (expected_adapter(row), [SEEN[row.seen][1]] if row.seen else None)
                 for name, row in ROWS.items()})
TABLE_ROWS = sorted(name for name in EXPECTED if TABLE_ROW.match(name))
TASK_ROUTED = tuple(name for name, row in ROWS.items() if row.routing == "task")
WRAPPERS = {"table1": "table1.sh", "cfs": "table_cfs.sh", "routing": "table_routing.sh", "table2": "table2.sh"}


@functools.lru_cache(maxsize=None)
def composed(name: str):
    """(config, AdapterConfig or None, data.tasks, on the paper's stack?) of configs/experiment/<name>.yaml."""
    cfg = compose_config([f"experiment={name}"])
    adapter = None if cfg.adapter.kind == "none" else AdapterConfig.coerce(cfg.adapter)
    tasks = cfg.data.get("tasks")
    tasks = list(tasks) if tasks is not None else None
    return cfg, adapter, tasks, cfg.model.builder._target_ == "mixlora.build.build_pretrained_llava"


def header(name: str) -> str:
    """The comment block a config file starts with."""
    lines = (ROOT / f"configs/experiment/{name}.yaml").read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, l in enumerate(lines) if not l.startswith("#"))])


def mentions(text: str, number: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text) is not None


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=1, stage1_size=8, progress=False)
    return out


def tiny(suite: Path, out: Path, name: str, *extra: str) -> list[str]:
    """Overrides running a paper row on the tiny stack and the test's suite, one process, micro-batches of 4."""
    rows = [f"experiment={name}", *TINY, f"output_dir={out}", f"data.annotations={suite / 'train.json'}",
            f"data.image_folder={suite / 'images'}", "data.generate=null", "logger=disabled",
            "trainer.progress_bar=false", "trainer.micro_batch_size=4", "trainer.global_batch_size=4",
            "trainer.save_every=0"]
    if name in TASK_ROUTED:
        rows.append(f"data.task_definitions={suite / 'task_definitions.json'}")
    return rows + list(extra)


# ---------------------------------------------------------------------------------------------- configs
def test_the_table_experiments_are_exactly_the_expected_ones():
    assert sorted(n for n in EXPERIMENTS if TABLE_ROW.match(n)) == TABLE_ROWS
    assert len(TABLE_ROWS) == 5 + 6 + 6 + 6 + 6 + 4 + 12  # LoRA, t1, t1c, cfs, cfs_c, routing x4, specialists
    assert TASK_ROUTED == ("routing_task_e32_r4", "routing_c_task_e32_r4")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_every_row_is_named_after_its_labels(name):
    assert expected_name(ROWS[name]) == name


def test_each_table_holds_its_paper_rows_in_the_paper_order():
    label = lambda n: dataclasses.astuple(ROWS[n])[1:]  # noqa: E731  (method, variant, E, r, alpha, cfs, routing, seen)
    t1 = TABLES["table1"].rows
    assert [label(n) for n in t1] == (
        [("lora", None, None, r, "2r", True, "instance", None) for r in (2, 4, 8, 16, 32)]
        + [("mixlora", v, E, r, "2E", True, "instance", None) for v in ("released", "corrected")
           for E, r in FACTORS_RANKS])
    # each IFS-only row next to the Table 1 row it is compared with: the same row with CFS
    cfs = TABLES["cfs"].rows
    pairs = list(zip(cfs[::2], cfs[1::2]))
    assert [(ROWS[a].variant, ROWS[a].E, ROWS[a].r, ROWS[a].cfs) for a, _ in pairs] == [
        (v, E, r, False) for v in ("released", "corrected") for E, r in FACTORS_RANKS]
    assert all(dataclasses.replace(ROWS[a], name=b, cfs=True) == ROWS[b] and b in t1 for a, b in pairs)
    routing = TABLES["routing"].rows
    assert [(ROWS[n].variant, ROWS[n].routing, ROWS[n].E, ROWS[n].r, ROWS[n].cfs) for n in routing] == [
        (v, source, 32, 4, True) for v in ("released", "corrected") for source in ("instance", "task", "random")]
    assert [n for n in routing if ROWS[n].routing == "instance"] == ["t1_mixlora_e32_r4", "t1c_mixlora_e32_r4"]
    t2 = TABLES["table2"].rows
    assert [(ROWS[n].method, ROWS[n].r, ROWS[n].seen) for n in t2[:12]] == [
        ("lora", r, key) for r in (4, 16) for key in SEEN]
    assert [label(n) for n in t2[12:]] == [("lora", None, None, 4, "2r", True, "instance", None),
                                          ("lora", None, None, 16, "2r", True, "instance", None),
                                          ("mixlora", "released", 16, 4, "2E", True, "instance", None),
                                          ("mixlora", "corrected", 16, 4, "2E", True, "instance", None)]
    assert set(t2[12:]) <= set(t1)  # Table 2's multi-task rows are Table 1's models
    assert set(ROWS) == set(t1) | set(cfs) | set(routing) | set(t2)  # every row is in some table


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_experiments_compose_to_the_released_settings(name):
    cfg, adapter, tasks, paper_stack = composed(name)
    t = cfg.trainer
    assert (t.strategy, t.deepspeed_config) == ("deepspeed", "configs/deepspeed/zero3.json")
    assert (t.optimizer.lr, t.optimizer.weight_decay, t.warmup_ratio, t.epochs, t.schedule_steps) == \
        (4e-5, 0.0, 0.03, 3, None)
    assert (t.global_batch_size, t.micro_batch_size, t.gradient_checkpointing, t.save_every) == (128, 16, True, 477)
    assert cfg.seed == 42 and cfg.data.template == "vicuna_v1" and cfg.data.max_length == 1792 + 255
    assert paper_stack and cfg.data.annotations == "data/vision_flan/annotations.clean.json"
    if name in ROWS:  # the launch command lives in docs/reproduce.md, which the generated header points to
        assert "docs/reproduce.md" in header(name) and "torchrun" not in header(name)
    assert (adapter, tasks) == EXPECTED[name]
    definitions = cfg.data.get("task_definitions")
    assert definitions == ("data/vision_flan/task_definitions.json" if name in TASK_ROUTED else None)
    # Without local checkpoints the paths are unset: a clear message before anything is built.
    with pytest.raises(ConfigError, match=r"model\.paths\.llm.* are not set"):
        preflight(cfg)


def paper_rows():
    """(source, label, [(adapter, data.tasks) of each variant], numbers the row's table listing must name) for
    every row of results/paper/*.csv that a training run reproduces."""
    out, skipped = [], []
    for p in csv.DictReader(open(PAPER / "table1.csv")):
        numbers = [p[c] for c in ("MME", "TextVQA", "VSR", "SNLI-VE", "CIFAR-10", "CIFAR-100", "MNIST", "POPE", "MMAvg")]
        label = f"{p['model']} E={p['E']} r={p['r']}"
        if p["model"] == "LoRA":
            out.append(("table1", label, [(lora(int(p["r"])), None)], numbers))
        elif p["model"] == "MixLoRA":
            E, r = int(p["E"]), int(p["r"])
            out.append(("table1", label, [(released(E, r), None), (corrected(E, r), None)], numbers))
        else:
            skipped.append(p["model"])
    # The base model is evaluated, not trained (eval.py run=null); full fine-tuning is not a paper-table row here.
    assert skipped == ["LLaVA_Align", "LLaVA_FT"]
    for p in csv.DictReader(open(PAPER / "cfs_ablation.csv")):
        E, r = int(p["E"]), int(p["r"])
        out.append(("cfs_ablation", f"E={E} r={r}", [(released(E, r, cfs="none"), None),
                                                      (corrected(E, r, cfs="none"), None)],
                    [p["MMAvg_ifs_only"], p["MMAvg_ifs_cfs"]]))
    for p in csv.DictReader(open(PAPER / "routing_ablation.csv")):
        variants = {"instance": [released(32, 4), corrected(32, 4)],
                    "task": [released(32, 4, routing_source="task", decode_routing="prefill"),
                             corrected(32, 4, routing_source="task")],
                    "random": [released(32, 4, routing_source="random"),
                               corrected(32, 4, routing_source="random")]}[p["routing"]]
        out.append(("routing_ablation", p["routing"], [(a, None) for a in variants], [p["MME"]]))
    columns = [c for c, _ in SEEN.values()] + ["AVG"]
    for p in csv.DictReader(open(PAPER / "table2.csv")):
        r = int(p["r"])
        if p["model"] == "LoRA_Specialist":  # one specialist per seen task, each its own config
            for column, pattern in SEEN.values():
                out.append(("table2", f"{p['model']} r={r} {column}", [(lora(r), [pattern])], [p[column], p["AVG"]]))
        elif p["model"] == "LoRA":
            out.append(("table2", f"LoRA r={r}", [(lora(r), None)], [p[c] for c in columns]))
        else:
            E = int(p["E"])
            out.append(("table2", f"MixLoRA E={E} r={r}", [(released(E, r), None), (corrected(E, r), None)],
                        [p[c] for c in columns]))
    return out


SOURCE_TABLE = {"table1": "table1", "cfs_ablation": "cfs", "routing_ablation": "routing", "table2": "table2"}


@functools.lru_cache(maxsize=None)
def listed(key: str) -> dict[str, str]:
    """{row: its lines} of `python -m mixlora.tables KEY --list` (a row's first line starts at column 2)."""
    proc = tables(key, "--list")
    assert proc.returncode == 0, proc.stderr
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines()[1:]:
        if line[2] != " ":
            name = line.split()[0]
            out[name] = ""
        out[name] += line + "\n"
    return out


@pytest.mark.parametrize("source,label,variants,numbers", paper_rows(),
                         ids=[f"{s}:{l}" for s, l, _, _ in paper_rows()])
def test_every_paper_row_has_exactly_one_config_and_its_table_lists_its_numbers(source, label, variants, numbers):
    for adapter, tasks in variants:
        hits = [n for n in EXPERIMENTS if composed(n)[3] and composed(n)[1:3] == (adapter, tasks)]
        assert len(hits) == 1, f"{source} {label}: {len(hits)} configs compose to {adapter} tasks={tasks}: {hits}"
        listing = listed(SOURCE_TABLE[source]).get(hits[0], "")
        missing = [x for x in numbers if not mentions(listing, x)]
        assert not missing, f"`{SOURCE_TABLE[source]} --list` does not name the paper's {missing} for {hits[0]}"
        # The numbers live in results/paper/*.csv only, not in the experiment file.
        text = (ROOT / f"configs/experiment/{hits[0]}.yaml").read_text()
        assert not [x for x in numbers if mentions(text, x)], f"{hits[0]}.yaml repeats the paper's numbers"


@pytest.mark.parametrize("name", TABLE_ROWS)
def test_every_table_row_passes_preflight_on_the_tiny_stack(name, suite, tmp_path):
    plan = preflight(compose_config(tiny(suite, tmp_path / "run", name)))
    assert plan.trainer.strategy == "single" and plan.world == 1
    assert (plan.adapter, plan.data.tasks) == EXPECTED[name]


# One real run per kind of row (the widest E and r of each), on the tiny stack; every row trains in the slow
# end-to-end test of the table runner below.
REPRESENTATIVES = ["t1_lora_r32", "t1_mixlora_e32_r8", "t1c_mixlora_e32_r8", "cfs_ifs_e32_r8", "cfs_c_ifs_e32_r8",
                   "routing_random_e32_r4", "routing_c_random_e32_r4", *TASK_ROUTED, "t2_lora_specialist_r16_coco"]


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_each_kind_of_table_row_trains_two_steps_on_the_tiny_stack(name, suite, tmp_path):
    extra = ["trainer.max_steps=2"]
    if name.startswith("t2_"):
        extra.append("data.tasks=['synthcaptions+*']")  # the COCO specialist's stand-in: the three caption tasks
    summary = run(compose_config(tiny(suite, tmp_path / "run", name, *extra)))
    assert summary["steps"] == 2 and math.isfinite(summary["loss_last"])
    saved = json.loads((tmp_path / "run/adapter_config.json").read_text())
    expected = EXPECTED[name][0]
    assert {k: saved[k] for k in ("kind", "rank", "alpha")} == {"kind": expected.kind, "rank": expected.rank,
                                                                  "alpha": expected.alpha}
    if expected.kind == "mixlora":
        assert (saved["num_factors"], saved["cfs"], saved["routing_source"]) == \
            (expected.num_factors, expected.cfs, expected.routing_source)
    if name.startswith("t2_"):
        # 3 caption tasks x 4 records = 12 samples -> 12 / (micro 4 x accumulation 1) = 3 steps per epoch
        assert summary["steps_per_epoch"] == 3


# ---------------------------------------------------------------------------------------------- data.tasks
def test_select_tasks_matches_whole_names_and_wildcards_ignoring_case():
    names = ["coco+a", "COCO+b", "fairface+age", "coco_extra+c", "INATURALIST+order", "coco+a"]
    assert select_tasks(names, ["coco+*"]) == [0, 1, 5]
    assert select_tasks(names, ["inaturalist+ORDER", "fairface+age"]) == [2, 4]
    assert select_tasks(names, ["coco+a"]) == [0, 5]  # whole names only: coco_extra+c is not a prefix match
    assert select_tasks(names, ["coco*", "coco+b"]) == [0, 1, 3, 5]  # union, in sample order, no repeats
    with pytest.raises(ConfigError, match=r"pattern\(s\) \['pacs\+\*'\] match no task_name in train\.json; tasks "
                                          r"there: COCO\+b, INATURALIST\+order, coco\+a, coco_extra\+c, fairface"):
        select_tasks(names, ["coco+*", "pacs+*"], source="train.json")


@pytest.mark.parametrize("tasks,message", [
    ("coco+*", "must be null or a non-empty list"),
    ([], "must be null or a non-empty list"),
    (["coco+*", ""], "must be null or a non-empty list"),
    (["coco+*", 3], "must be null or a non-empty list"),
    (["coco+*", "COCO+*"], r"lists \['COCO\+\*', 'coco\+\*'\] more than once"),
])
def test_data_tasks_setting_is_validated(tasks, message):
    with pytest.raises(ConfigError, match=message):
        DataSettings(annotations="train.json", image_folder=None, tasks=tasks)
    assert DataSettings(annotations="train.json", image_folder=None, tasks=("a+*",)).tasks == ["a+*"]


def test_a_task_pattern_matching_nothing_stops_training_with_the_task_names(suite, tmp_path):
    with pytest.raises(ConfigError, match=r"\['PACS\+\*'\] match no task_name .* SynthCaptions\+caption_matching"):
        run(compose_config(tiny(suite, tmp_path / "run", "t1_lora_r4", "data.tasks=['PACS+*']",
                                "trainer.max_steps=1")))


# ---------------------------------------------------------------------------------------------- table runner
# The environment settings of the runner's wrappers: taken only from a test's `env`, never from the shell running
# pytest.
SCRIPT_SETTINGS = ("ROWS", "DRY_RUN", "NPROC", "KEEP_GOING", "RESULTS", "TORCHRUN", "SEEN_EVAL", "SEEN_TASKS",
                   "TASK_DEFINITIONS", "FACTORS", "RANKS", "LORA_RANKS", "VARIANTS", "ALPHA", "BASE", "LAUNCHER",
                   "EVAL", "EVAL_DEVICE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_SETTINGS}
    env.update(extra)
    return env


def script(name: str, *args, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run the wrapper scripts/<name> from the repository root with the test's Python, eval on the CPU."""
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True,
                          env=clean_env(PY=sys.executable, EVAL_DEVICE="cpu", **(env or {})), cwd=ROOT,
                          timeout=timeout)


def tables(*args, timeout: int = 60, cwd: Path = ROOT, eval_device: str | None = "cpu") -> subprocess.CompletedProcess:
    """Run `python -m mixlora.tables ARGS`, with `--eval-device EVAL_DEVICE` unless that is None."""
    device = [] if eval_device is None or "--list" in args else ["--eval-device", eval_device]
    argv = [str(args[0]), *device, *map(str, args[1:])]  # before any `--`, after which all are eval overrides
    return subprocess.run([sys.executable, "-m", "mixlora.tables", *argv], capture_output=True, text=True,
                          env=clean_env(), cwd=cwd, timeout=timeout)


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
    tool = "scripts/table2_aggregate.py" if key == "table2" else "scripts/aggregate.py"
    assert aggregate == [[sys.executable, tool, *[str(tmp_path / "out" / r) for r in expected],
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
    spec = importlib.util.spec_from_file_location("table2_aggregate", ROOT / "scripts/table2_aggregate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
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
