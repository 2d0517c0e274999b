"""Shared by the paper-table tests (test_experiments.py, test_table_runner.py): the expected adapter of every row,
computed from the row's labels independently of the generated configs, and the tiny-stack overrides.

The rows come from the row table (mixlora/tables/rows.py), but the references here are independent of it and of the
configs under test: LoRA alpha = 2r; released MixLoRA with alpha = 2E; the corrected variant at the same alpha.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mixlora import AdapterConfig
from mixlora.tables.rows import ROWS

ROOT = Path(__file__).resolve().parents[1]
TABLE_ROW = re.compile(r"^(t1c?|t2|cfs|routing)_")
TINY = ["model=tiny", "data=synthetic", "trainer=single"]


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


def make_suite(tmp_path_factory) -> Path:
    """A small synthetic suite for the tiny stack (the test modules' `suite` fixture)."""
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


# The environment settings of the runner's wrappers: taken only from a test's `env`, never from the shell running
# pytest.
SCRIPT_SETTINGS = ("ROWS", "DRY_RUN", "NPROC", "KEEP_GOING", "RESULTS", "TORCHRUN", "SEEN_EVAL", "SEEN_TASKS",
                   "TASK_DEFINITIONS", "FACTORS", "RANKS", "LORA_RANKS", "VARIANTS", "ALPHA", "BASE", "LAUNCHER",
                   "EVAL", "EVAL_DEVICE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_SETTINGS}
    env.update(extra)
    return env


def tables(*args, timeout: int = 60, cwd: Path = ROOT, eval_device: str | None = "cpu") -> subprocess.CompletedProcess:
    """Run `python -m mixlora.tables ARGS`, with `--eval-device EVAL_DEVICE` unless that is None."""
    device = [] if eval_device is None or "--list" in args else ["--eval-device", eval_device]
    argv = [str(args[0]), *device, *map(str, args[1:])]  # before any `--`, after which all are eval overrides
    return subprocess.run([sys.executable, "-m", "mixlora.tables", *argv], capture_output=True, text=True,
                          env=clean_env(), cwd=cwd, timeout=timeout)
