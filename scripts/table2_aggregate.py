#!/usr/bin/env python
"""Table 2: merge the specialists and average the six seen tasks: ``python -m mixlora.tables.aggregate_table2`` (run from a checkout)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not

from mixlora.tables.aggregate_table2 import main  # noqa: E402

if __name__ == "__main__":
    main()
