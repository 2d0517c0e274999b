"""The data-loading benchmark times both modes on the same batches, and checks they are identical."""

import importlib.util
import json
from pathlib import Path

from mixlora.data.testbed import make_testbed

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_data.py"


def test_data_benchmark_times_decode_and_memo_on_identical_batches(tmp_path):
    data = tmp_path / "testbed"
    make_testbed(data, train_images=12, test_images=6, train_per_task=4, test_per_task=1, stage1_size=6,
                 progress=False)
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--data", str(data), "--batch", "4", "--batches", "3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "data_cpu.json").read_text())
    assert [r["mode"] for r in result["rows"]] == ["decode", "memo"] and result["identical"] is True
    assert all(r["batch_ms"] > 0 for r in result["rows"])
    # The memo holds each distinct image its first pass read (at most 12 batch slots, 12 training images).
    assert 1 <= result["memo_images"] <= 12 and result["samples"] == 6 * 4
    assert "bench_data.py" in result["command"] and (tmp_path / "data_cpu.md").is_file()
