"""Process-wide state that one test must not leave to the next.

A script's ``main()`` called in this process (the benchmarks, the GPU check) sets torch's thread count for its
own timing; the next test would then run its matrix products with other reduction splits, and a test that
compares runs bit for bit would compare runs made with different thread counts.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
