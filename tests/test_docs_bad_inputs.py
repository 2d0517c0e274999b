"""docs/bad_inputs.md stays true: every test a row names exists, and every test of the safety files has a row.

The messages themselves are asserted by the named tests; this keeps the table and those tests in step (a new
safety test without a row, or a row whose test was renamed or removed, fails here).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs/bad_inputs.md"
# Files whose every test is a bad input or a failure a user runs into: each must appear in the table.
SAFETY_FILES = ("tests/test_bad_inputs.py", "tests/test_run_safety.py", "tests/test_runlock.py")


def functions_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def cited() -> set[tuple[str, str]]:
    return set(re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", TABLE.read_text()))


def test_every_cited_test_exists():
    refs = cited()
    assert len(refs) > 30
    missing = sorted(f"{f}::{name}" for f, name in refs if name not in functions_of(ROOT / f))
    assert not missing, f"docs/bad_inputs.md names tests that do not exist: {missing}"


def test_every_safety_test_has_a_row():
    refs = cited()
    absent = sorted(f"{f}::{name}" for f in SAFETY_FILES for name in functions_of(ROOT / f) if (f, name) not in refs)
    assert not absent, f"add a row to docs/bad_inputs.md for: {absent}"
