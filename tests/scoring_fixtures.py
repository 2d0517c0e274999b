"""Shared by the scorer tests (test_scorers.py, test_scorers_mmavg.py, test_score_cli.py): the folder of
hand-made fixture files whose scores the tests work out by hand, and the comparison used for those numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest


FIXTURES = Path(__file__).parent / "fixtures" / "scoring"


def approx(x):
    return pytest.approx(x, abs=1e-9)
