"""The paper's tables as experiments: the row table (mixlora/tables/rows.py), the configs generated from it
(configs/experiment/{t1,t1c,cfs,routing,t2}_*.yaml) and the data task filter that the Table 2 specialists use.
The table runner is tested in test_table_runner.py; the references both use are in experiment_rows.py.

Each row's name is checked against its labels, each table's rows against the paper's layout, every config against
the adapter computed from the row's labels, and sample counts are computed by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import re

import pytest

from experiment_rows import (EXPECTED, ROOT, SEEN, TABLE_ROW, TABLE_ROWS, TASK_ROUTED, corrected, expected_name, lora,
                             make_suite, released, tables, tiny)
from mixlora import AdapterConfig
from mixlora.tables.rows import ROWS, TABLES
from mixlora.train import ConfigError, compose_config, run
from mixlora.train.data import select_tasks
from mixlora.train.settings import DataSettings
from mixlora.train.validate import preflight

PAPER = ROOT / "results/paper"
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs/experiment").glob("*.yaml"))
FACTORS_RANKS = [(E, r) for r in (2, 4, 8) for E in (16, 32)]


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
    return make_suite(tmp_path_factory)


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
    # the shipped file by its absolute path (${config_dir:}), so any working directory finds it
    assert (t.strategy, t.deepspeed_config) == ("deepspeed", str(ROOT / "configs/deepspeed/zero3.json"))
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
