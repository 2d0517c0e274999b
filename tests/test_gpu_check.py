"""scripts/gpu_check.py in its CPU mode (every section at toy sizes) and scripts/bench_decode.py's variant swapping."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
META_KEYS = {"command", "date", "git", "python", "torch", "cuda", "transformers", "device", "machine", "environment"}


def _load(name):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled",
                TOKENIZERS_PARALLELISM="false")


def test_cpu_mode_runs_every_section_and_records_numbers(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--sections", "a,b,c,d",
                           "--out", str(tmp_path), "--work", str(tmp_path / "work")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert META_KEYS <= set(result)
    assert result["command"].startswith("python scripts/gpu_check.py --device cpu")
    sections = result["sections"]
    assert {k: sections[k]["status"] for k in "abcd"} == {"a": "ok", "b": "ok", "c": "ok", "d": "skipped"}
    assert "--smollm2-dir" in sections["d"]["skipped"]  # the reason names what is missing

    a = sections["a"]
    assert {r["variant"] for r in a["rows"]} >= {"frozen", "lora_r4", "mixlora_paper_e16_r4", "dense_released"}
    assert all(r["time_ms"] > 0 for r in a["rows"])
    assert a["command"].startswith("python scripts/bench_adapters.py")

    b = sections["b"]
    rows = {r["variant"]: r for r in b["backends"]["plain"]["rows"]}
    assert set(rows) == {"lora_r4", "mixlora_e16_r4", "released_e16_r4"}
    assert all(r["tokens_per_s"] > 0 and r["step_peak_over_idle_mib"] > 0 for r in rows.values())
    # the routing mask covers the prompt, image positions included, and stops at the answer
    layout = b["layout"]
    assert all(layout["prefix"] + layout["image_positions"] < p < layout["seq"] for p in layout["prompt_lengths"])
    assert set(b["zero_configs"]) == {"zero2", "zero3"} and "CUDA only" in b["zero_skipped"]
    assert b["zero_configs"]["zero3"]["stage"] == 3

    c = sections["c"]["sizes"]["7b_2layer"]
    decode = {r["variant"]: r for r in c["rows"]}
    assert {"lora_r4", "mixlora_e16_r4_prefill", "mixlora_e16_r4_per_step", "released_e16_r4_per_step"} <= set(decode)
    assert all(r["tokens_per_s"] > 0 for r in decode.values())
    assert any(k.startswith("mixlora_e16_r4_prefill / lora_r4") for k in c["ratios"])

    md = (tmp_path / "gpu_check_cpu.md").read_text()
    assert "## d:" in md and "Skipped:" in md and "Command: `python scripts/gpu_check.py" in md


@pytest.mark.parametrize("argv, message", [(["--sections", "a,x"], "unknown section"),
                                           (["--seq", "100"], "--seq 100 must be >= 320"),
                                           (["--rank", "16"], "must be smaller")])
def test_bad_arguments_exit_2(argv, message, tmp_path, capsys):
    check = _load("gpu_check")
    with pytest.raises(SystemExit) as exc:
        check.main(["--device", "cpu", "--out", str(tmp_path), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_decode_bank_variant_equals_a_freshly_injected_model():
    """A variant swapped in by AdapterBank computes exactly what inject_adapters on a fresh model computes, and
    'frozen' puts the plain linears back."""
    import mixlora
    from mixlora.inject import inject_adapters

    bench = _load("bench_decode")
    shape = bench.LLMShape(hidden=32, intermediate=64, heads=2, layers=2, vocab=97)
    device = torch.device("cpu")
    configs = bench.variant_configs(rank=2, factors=6)
    ids = torch.randint(1, 97, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids, dtype=torch.bool)

    def logits(model):
        with torch.no_grad(), mixlora.routing(model, mask, sequence_mask=mask):
            return model(input_ids=ids).logits

    llm = bench.build_llama(shape, device, torch.float32).eval()
    plain = logits(llm)
    bank = bench.AdapterBank(llm, configs, seed=0)
    for name, cfg in configs.items():
        bank.use(name)
        fresh = bench.build_llama(shape, device, torch.float32).eval()
        if cfg is not None:
            torch.manual_seed(0)
            for adapter in inject_adapters(fresh, cfg).values():
                with torch.no_grad():
                    adapter.lora_b.normal_(0.0, 0.01)
        torch.testing.assert_close(logits(llm), logits(fresh), rtol=0, atol=0)
        if cfg is not None:
            assert not torch.allclose(logits(llm), plain)  # the adapter contributes
    bank.use("frozen")
    assert not mixlora.adapter_modules(llm)
    torch.testing.assert_close(logits(llm), plain, rtol=0, atol=0)


def test_decode_benchmark_writes_tables(tmp_path):
    bench = _load("bench_decode")
    result = bench.main(["--sizes", "tiny", "--batch", "2", "--new-tokens", "3", "--repeats", "1", "--warmup", "0",
                         "--threads", "1", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in result["sizes"]["tiny"]["rows"]}
    assert {"frozen", "lora_r4", "mixlora_e16_r4_prefill", "mixlora_e16_r4_per_step"} <= set(rows)
    assert (tmp_path / "decode_cpu.json").is_file()
    md = (tmp_path / "decode_cpu.md").read_text()
    assert "Command: `python scripts/bench_decode.py --sizes tiny" in md and "decode tokens/s" in md


@pytest.mark.parametrize("argv, message", [(["--sizes", "huge"], "unknown size"),
                                           (["--new-tokens", "1"], "--new-tokens must be >= 2"),
                                           (["--rank", "16", "--factors", "16"], "must be smaller")])
def test_decode_bad_arguments_exit_2(argv, message, capsys):
    bench = _load("bench_decode")
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
