"""Every row of the paper's tables, once: what each row trains, and which rows each table runs, in order.

A row is one training run on the paper's stack (``paper_base``: docs/method.md#paper-setup) with one adapter.
``python -m mixlora.tables.generate`` writes ``configs/experiment/<row>.yaml`` from it, ``python -m mixlora.tables``
runs the tables, and the paper's numbers are looked up in results/paper/*.csv (:mod:`mixlora.tables.paper`), never
copied here.

Labels of a row:

* ``method``: ``lora`` or ``mixlora``.
* ``variant`` (MixLoRA only): ``released`` (what the authors' code computes, docs/method.md#released-variant) or
  ``corrected`` (the paper's equations, docs/method.md#corrected-variant).
* ``E``, ``r``: MixLoRA selects r of its E rank-one factors per instance (r < E); LoRA has rank r.
* ``alpha``: the scale, ``2r`` (LoRA: multiplier alpha/r = 2) or ``2E`` (MixLoRA, both variants, as released:
  multiplier 2E/r), so that released and corrected differ in the method only.
* ``cfs``: IFS+CFS (True) or IFS only (False: ``cfs: none``, the CFS ablation).
* ``routing``: ``instance`` (the method), ``task`` (route on the task's definition) or ``random`` (the routing
  ablation).
* ``seen``: a Table 2 LoRA specialist's task (a key of :data:`SEEN_TASKS`): trained on that task alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class SeenTask:
    """One of Table 2's six seen tasks: its column in results/paper/table2.csv and its Vision-Flan task_name
    pattern (``data.tasks``; shell pattern, case-insensitive)."""

    column: str
    pattern: str


# The released code's commented-out list of its six interference tasks (`target_tasks` in llava_trainer.py). It
# names no COCO task (that slot holds cinic-10), so the COCO specialist trains on every coco+* task: a guess.
SEEN_TASKS: dict[str, SeenTask] = {
    "scienceqa": SeenTask("ScienceQA", "scienceqa+question_answering"),
    "coco": SeenTask("COCO", "coco+*"),
    "fairface": SeenTask("FairFace", "fairface+image_classification_age"),
    "inaturalist": SeenTask("iNaturalist", "INATURALIST+order_classification"),
    "stvqa": SeenTask("ST-VQA", "STVQA+image_question_answer"),
    "pacs": SeenTask("PACS", "PACS+elephant_image_category_classification"),
}


@dataclass(frozen=True)
class Row:
    """One paper row: a named experiment (``configs/experiment/<name>.yaml``). Labels: the module docstring."""

    name: str
    method: str
    variant: str | None = None
    E: int | None = None
    r: int = 0
    alpha: str = "2r"
    cfs: bool = True
    routing: str = "instance"
    seen: str | None = None

    def __post_init__(self):
        problems = [] if isinstance(self.r, int) and self.r > 0 else [f"r must be a positive integer, got {self.r!r}"]
        if self.method == "lora":
            if (self.variant, self.E, self.alpha, self.cfs, self.routing) != (None, None, "2r", True, "instance"):
                problems.append("LoRA has no variant, E, CFS or routing, and alpha = 2r")
        elif self.method == "mixlora":
            if self.variant not in ("released", "corrected"):
                problems.append(f"variant must be released or corrected, got {self.variant!r}")
            if not (isinstance(self.E, int) and 0 < self.r < self.E):
                problems.append(f"MixLoRA selects r of E factors: needs 0 < r < E, got E={self.E} r={self.r}")
            if self.alpha not in ("2r", "2E"):
                problems.append(f"alpha must be 2r or 2E, got {self.alpha!r}")
            if self.routing not in ("instance", "task", "random"):
                problems.append(f"routing must be instance, task or random, got {self.routing!r}")
            if self.seen is not None:
                problems.append("the seen-task specialists are LoRA rows")
        else:
            problems.append(f"method must be lora or mixlora, got {self.method!r}")
        if self.seen is not None and self.seen not in SEEN_TASKS:
            problems.append(f"seen must be one of {', '.join(SEEN_TASKS)}, got {self.seen!r}")
        if problems:
            raise ValueError(f"row {self.name}: " + "; ".join(problems))

    def describe(self) -> str:
        """One line naming the row's labels, e.g. ``MixLoRA E=16 r=4, released, alpha = 2E, IFS only``."""
        if self.method == "lora":
            text = f"LoRA r={self.r}, alpha = 2r"
        else:
            text = f"MixLoRA E={self.E} r={self.r}, {self.variant}, alpha = {self.alpha}"
            text += ", IFS+CFS" if self.cfs else ", IFS only"
            if self.routing != "instance":
                text += f", {self.routing} routing"
        if self.seen is not None:
            text += f", trained on {SEEN_TASKS[self.seen].pattern} alone (specialist)"
        return text


_ROWS = (
    # Table 1: LoRA (alpha = 2r), MixLoRA as released and corrected at the same E, r and alpha = 2E.
    Row("t1_lora_r2", "lora", r=2),
    Row("t1_lora_r4", "lora", r=4),
    Row("t1_lora_r8", "lora", r=8),
    Row("t1_lora_r16", "lora", r=16),
    Row("t1_lora_r32", "lora", r=32),
    Row("t1_mixlora_e16_r2", "mixlora", "released", E=16, r=2, alpha="2E"),
    Row("t1_mixlora_e32_r2", "mixlora", "released", E=32, r=2, alpha="2E"),
    Row("t1_mixlora_e16_r4", "mixlora", "released", E=16, r=4, alpha="2E"),
    Row("t1_mixlora_e32_r4", "mixlora", "released", E=32, r=4, alpha="2E"),
    Row("t1_mixlora_e16_r8", "mixlora", "released", E=16, r=8, alpha="2E"),
    Row("t1_mixlora_e32_r8", "mixlora", "released", E=32, r=8, alpha="2E"),
    Row("t1c_mixlora_e16_r2", "mixlora", "corrected", E=16, r=2, alpha="2E"),
    Row("t1c_mixlora_e32_r2", "mixlora", "corrected", E=32, r=2, alpha="2E"),
    Row("t1c_mixlora_e16_r4", "mixlora", "corrected", E=16, r=4, alpha="2E"),
    Row("t1c_mixlora_e32_r4", "mixlora", "corrected", E=32, r=4, alpha="2E"),
    Row("t1c_mixlora_e16_r8", "mixlora", "corrected", E=16, r=8, alpha="2E"),
    Row("t1c_mixlora_e32_r8", "mixlora", "corrected", E=32, r=8, alpha="2E"),
    # CFS ablation: IFS only (the IFS+CFS bars are the Table 1 rows).
    Row("cfs_ifs_e16_r2", "mixlora", "released", E=16, r=2, alpha="2E", cfs=False),
    Row("cfs_ifs_e32_r2", "mixlora", "released", E=32, r=2, alpha="2E", cfs=False),
    Row("cfs_ifs_e16_r4", "mixlora", "released", E=16, r=4, alpha="2E", cfs=False),
    Row("cfs_ifs_e32_r4", "mixlora", "released", E=32, r=4, alpha="2E", cfs=False),
    Row("cfs_ifs_e16_r8", "mixlora", "released", E=16, r=8, alpha="2E", cfs=False),
    Row("cfs_ifs_e32_r8", "mixlora", "released", E=32, r=8, alpha="2E", cfs=False),
    Row("cfs_c_ifs_e16_r2", "mixlora", "corrected", E=16, r=2, alpha="2E", cfs=False),
    Row("cfs_c_ifs_e32_r2", "mixlora", "corrected", E=32, r=2, alpha="2E", cfs=False),
    Row("cfs_c_ifs_e16_r4", "mixlora", "corrected", E=16, r=4, alpha="2E", cfs=False),
    Row("cfs_c_ifs_e32_r4", "mixlora", "corrected", E=32, r=4, alpha="2E", cfs=False),
    Row("cfs_c_ifs_e16_r8", "mixlora", "corrected", E=16, r=8, alpha="2E", cfs=False),
    Row("cfs_c_ifs_e32_r8", "mixlora", "corrected", E=32, r=8, alpha="2E", cfs=False),
    # Routing ablation at E=32, r=4: task and random routing (instance routing is t1_/t1c_mixlora_e32_r4).
    Row("routing_task_e32_r4", "mixlora", "released", E=32, r=4, alpha="2E", routing="task"),
    Row("routing_random_e32_r4", "mixlora", "released", E=32, r=4, alpha="2E", routing="random"),
    Row("routing_c_task_e32_r4", "mixlora", "corrected", E=32, r=4, alpha="2E", routing="task"),
    Row("routing_c_random_e32_r4", "mixlora", "corrected", E=32, r=4, alpha="2E", routing="random"),
    # Table 2: one LoRA specialist per seen task and rank (its other rows are Table 1 models).
    Row("t2_lora_specialist_r4_scienceqa", "lora", r=4, seen="scienceqa"),
    Row("t2_lora_specialist_r4_coco", "lora", r=4, seen="coco"),
    Row("t2_lora_specialist_r4_fairface", "lora", r=4, seen="fairface"),
    Row("t2_lora_specialist_r4_inaturalist", "lora", r=4, seen="inaturalist"),
    Row("t2_lora_specialist_r4_stvqa", "lora", r=4, seen="stvqa"),
    Row("t2_lora_specialist_r4_pacs", "lora", r=4, seen="pacs"),
    Row("t2_lora_specialist_r16_scienceqa", "lora", r=16, seen="scienceqa"),
    Row("t2_lora_specialist_r16_coco", "lora", r=16, seen="coco"),
    Row("t2_lora_specialist_r16_fairface", "lora", r=16, seen="fairface"),
    Row("t2_lora_specialist_r16_inaturalist", "lora", r=16, seen="inaturalist"),
    Row("t2_lora_specialist_r16_stvqa", "lora", r=16, seen="stvqa"),
    Row("t2_lora_specialist_r16_pacs", "lora", r=16, seen="pacs"),
)
ROWS: dict[str, Row] = {row.name: row for row in _ROWS}
assert len(ROWS) == len(_ROWS), "row names must be unique"


@dataclass(frozen=True)
class Table:
    """One paper table: its rows in the order they are run and printed.

    key: the name typed in ``python -m mixlora.tables KEY``. paper: the results/paper/ file with its numbers.
    results: the default folder of the aggregated table. aggregate: the module that writes it (``python -m``). seen: scored on
    Table 2's seen tasks (``--seen-eval``) instead of the held-out benchmarks.
    """

    key: str
    title: str
    paper: str
    results: str
    rows: tuple[str, ...]
    aggregate: str = "mixlora.tables.aggregate"
    seen: bool = False

    def __post_init__(self):
        unknown = [name for name in self.rows if name not in ROWS]
        if unknown or len(set(self.rows)) != len(self.rows):
            raise ValueError(f"table {self.key}: unknown or repeated rows {unknown or self.rows}")

    def task_routed(self) -> bool:
        return any(ROWS[name].routing == "task" for name in self.rows)


TABLES: dict[str, Table] = {t.key: t for t in (
    Table("table1", "Table 1: zero-shot MME and seven held-out sets", "table1.csv", "results/table1", tuple("""
        t1_lora_r2 t1_lora_r4 t1_lora_r8 t1_lora_r16 t1_lora_r32
        t1_mixlora_e16_r2 t1_mixlora_e32_r2 t1_mixlora_e16_r4 t1_mixlora_e32_r4 t1_mixlora_e16_r8 t1_mixlora_e32_r8
        t1c_mixlora_e16_r2 t1c_mixlora_e32_r2 t1c_mixlora_e16_r4 t1c_mixlora_e32_r4 t1c_mixlora_e16_r8
        t1c_mixlora_e32_r8""".split())),
    # Each IFS-only row next to the IFS+CFS row (Table 1's) it is compared with.
    Table("cfs", "CFS ablation: MMAvg with IFS only vs IFS+CFS", "cfs_ablation.csv", "results/table_cfs", tuple("""
        cfs_ifs_e16_r2 t1_mixlora_e16_r2 cfs_ifs_e32_r2 t1_mixlora_e32_r2 cfs_ifs_e16_r4 t1_mixlora_e16_r4
        cfs_ifs_e32_r4 t1_mixlora_e32_r4 cfs_ifs_e16_r8 t1_mixlora_e16_r8 cfs_ifs_e32_r8 t1_mixlora_e32_r8
        cfs_c_ifs_e16_r2 t1c_mixlora_e16_r2 cfs_c_ifs_e32_r2 t1c_mixlora_e32_r2 cfs_c_ifs_e16_r4 t1c_mixlora_e16_r4
        cfs_c_ifs_e32_r4 t1c_mixlora_e32_r4 cfs_c_ifs_e16_r8 t1c_mixlora_e16_r8 cfs_c_ifs_e32_r8
        t1c_mixlora_e32_r8""".split())),
    Table("routing", "Routing ablation: MME with instance, task and random routing", "routing_ablation.csv",
          "results/table_routing", tuple("""
        t1_mixlora_e32_r4 routing_task_e32_r4 routing_random_e32_r4
        t1c_mixlora_e32_r4 routing_c_task_e32_r4 routing_c_random_e32_r4""".split())),
    Table("table2", "Table 2: accuracy on held-out instances of six seen (training) tasks", "table2.csv",
          "results/table2", tuple("""
        t2_lora_specialist_r4_scienceqa t2_lora_specialist_r4_coco t2_lora_specialist_r4_fairface
        t2_lora_specialist_r4_inaturalist t2_lora_specialist_r4_stvqa t2_lora_specialist_r4_pacs
        t2_lora_specialist_r16_scienceqa t2_lora_specialist_r16_coco t2_lora_specialist_r16_fairface
        t2_lora_specialist_r16_inaturalist t2_lora_specialist_r16_stvqa t2_lora_specialist_r16_pacs
        t1_lora_r4 t1_lora_r16 t1_mixlora_e16_r4 t1c_mixlora_e16_r4""".split()),
          aggregate="mixlora.tables.aggregate_table2", seen=True),
)}


def select_rows(table: Table, patterns: list[str] | None, source: str = "--rows") -> list[Row]:
    """The rows of ``table`` that ``patterns`` name, in the table's order (all of them when ``patterns`` is None).

    Each entry may hold several names or shell patterns separated by spaces or commas (``'t1_lora_*, t1c_*'``);
    every pattern must match a row of the table, or ValueError names it (``source``: the option or variable
    it came from)."""
    if patterns is None:
        return [ROWS[name] for name in table.rows]
    split = [p for entry in patterns for p in entry.replace(",", " ").split()]
    if not split:
        raise ValueError(f"{source} names no row; rows of {table.key}: {' '.join(table.rows)}")
    for pattern in split:
        if not any(fnmatchcase(name, pattern) for name in table.rows):
            raise ValueError(f"{source}: '{pattern}' matches no row of {table.key}; its rows: {' '.join(table.rows)}")
    return [ROWS[name] for name in table.rows if any(fnmatchcase(name, p) for p in split)]


def grid(table: Table = TABLES["table1"]) -> dict[str, tuple[int, ...]]:
    """{factors, ranks, lora_ranks}: the sorted E, MixLoRA r and LoRA r of a table's rows (the sweep's defaults)."""
    rows = [ROWS[name] for name in table.rows]
    mix = [row for row in rows if row.method == "mixlora"]
    return {"factors": tuple(sorted({row.E for row in mix})), "ranks": tuple(sorted({row.r for row in mix})),
            "lora_ranks": tuple(sorted({row.r for row in rows if row.method == "lora"}))}
