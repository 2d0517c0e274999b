#!/usr/bin/env python
"""Collect evaluated run directories into one table beside the paper's numbers: ``python -m mixlora.tables.aggregate`` (run from a checkout)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

from mixlora.tables.aggregate import main  # noqa: E402

if __name__ == "__main__":
    main()
