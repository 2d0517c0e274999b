"""The adapter benchmark runs, and its dense released-code reference computes the same function as MixLoRA."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_adapters.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_adapters", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dense_reference_equals_factored_mixlora():
    """ΔW_b = A_xᵀ B_x applied densely (released) == (x A_xᵀ) B_x (ours), same routing on the plain mean."""
    bench = _load()
    variants = bench.build_variants(24, 40, rank=3, factors=8, device=torch.device("cpu"), dtype=torch.float64)
    mix = variants["mixlora_released_e8_r3"]
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(variants["dense_released"](x), mix(x))
    assert not torch.allclose(mix(x), mix.base(x))  # the adapter contributes


def test_benchmark_writes_tables(tmp_path):
    bench = _load()
    result = bench.main(["--shapes", "32x48", "--batch", "2", "--seq", "8", "--repeats", "1", "--warmup", "0",
                         "--out", str(tmp_path)])
    assert {r["variant"] for r in result["rows"]} >= {"frozen", "lora_r4", "dense_released"}
    assert (tmp_path / "adapters_cpu_fp32.json").is_file()
    md = (tmp_path / "adapters_cpu_fp32.md").read_text()
    assert "mixlora_paper/lora time" in md and "Command: `python" in md
