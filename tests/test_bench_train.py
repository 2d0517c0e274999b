"""The training benchmark runs every variant on real micro-batches and reports what it trained.

References: the trainable counts of the tiny stack by hand (hidden 128, FFN 384, 2 layers; q,k,v,o 128->128,
gate/up 128->384, down 384->128): LoRA r adds r·(d_in + d_out) per linear, MixLoRA's pools E·(d_in + d_out)
(routers frozen), over the projector that every variant trains.
"""

import importlib.util
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import suite  # noqa: E402,F401  (the small synthetic suite)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"
PER_LAYER = 4 * (128 + 128) + 2 * (128 + 384) + (384 + 128)  # sum of d_in + d_out over the 7 linears


def test_train_benchmark_measures_every_variant(suite, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--data", str(suite), "--batch", "2", "--steps", "1", "--warmup", "0", "--rank", "4",
                       "--factors", "8", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "train_cpu.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"none", "lora_r4", "mixlora_e8_r4", "released_e8_r4"}
    base = rows["none"]["trainable"]
    assert rows["lora_r4"]["trainable"] - base == 2 * 4 * PER_LAYER
    assert rows["mixlora_e8_r4"]["trainable"] - base == rows["released_e8_r4"]["trainable"] - base == 2 * 8 * PER_LAYER
    assert all(r["tokens_per_s"] > 0 and r["memory_mib"] > 0 for r in rows.values())
    assert rows["lora_r4"]["vs_lora"] == 1.0
    assert set(result["ratios"]) == {"mixlora_e8_r4 / lora_r4 tokens/s", "released_e8_r4 / lora_r4 tokens/s"}
    assert "python" in result["command"] and (tmp_path / "train_cpu.md").is_file()
