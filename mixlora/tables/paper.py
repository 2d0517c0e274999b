"""The paper's numbers for a row of a table, looked up in results/paper/*.csv (stored there once, nowhere else).

The lookup goes by the row's labels: Table 1 and Table 2 by (model, E, r), the CFS ablation by (E, r), the routing
ablation by the routing source; a Table 2 specialist reports its own task's column and the row's AVG. The paper's
MixLoRA numbers are those of the released code, so a corrected row is shown the numbers of its released twin.
"""

from __future__ import annotations

import csv
from functools import lru_cache

from mixlora.package_data import paper_dir

from .rows import ROWS, SEEN_TASKS, TABLES, Row

PAPER = paper_dir()
LABEL_COLUMNS = ("model", "E", "r", "routing")


@lru_cache(maxsize=None)
def read(file: str) -> tuple[dict[str, str], ...]:
    with open(PAPER / file, newline="") as f:
        return tuple(csv.DictReader(f))


def numbers(table_key: str, row: Row) -> list[tuple[str, str]]:
    """[(column, value)] that results/paper/<table's file> reports for ``row``; [] when it reports none."""
    table = TABLES[table_key]
    model = {"lora": "LoRA", "mixlora": "MixLoRA"}[row.method]
    if table_key == "table2" and row.seen is not None:
        model += "_Specialist"
    wanted = {"table1": {"model": model, "E": str(row.E or ""), "r": str(row.r)},
              "table2": {"model": model, "E": str(row.E or ""), "r": str(row.r)},
              "cfs": {"E": str(row.E), "r": str(row.r)},
              "routing": {"routing": row.routing}}[table_key]
    hits = [p for p in read(table.paper) if all(p.get(k) == v for k, v in wanted.items())]
    if not hits:
        return []
    if len(hits) > 1:
        raise ValueError(f"results/paper/{table.paper} has {len(hits)} rows matching {wanted}")
    columns = [c for c in hits[0] if c not in LABEL_COLUMNS]
    if table_key == "table2" and row.seen is not None:
        columns = [SEEN_TASKS[row.seen].column, "AVG"]
    return [(c, hits[0][c]) for c in columns]


def listing(table_key: str) -> str:
    """What ``python -m mixlora.tables TABLE --list`` prints: every row, its labels and the paper's numbers."""
    table = TABLES[table_key]
    width = max(len(name) for name in table.rows)
    lines = [f"{table.key}: {table.title} (the paper's numbers: results/paper/{table.paper})"]
    for name in table.rows:
        row = ROWS[name]
        found = numbers(table_key, row)
        paper = ", ".join(f"{c} {v}" for c, v in found) if found else "not reported"
        source = "paper, released code" if row.variant == "corrected" else "paper"
        lines.append(f"  {name:<{width}}  {row.describe()}\n  {'':<{width}}  {source}: {paper}")
    return "\n".join(lines)
