"""Helpers shared by the benchmarks (scripts/bench_*.py, scripts/gpu_check.py): memory accounting, timing and
the environment header every result file starts with."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn


@contextmanager
def saved_activations(module: nn.Module) -> Iterator[dict[int, int]]:
    """Record what autograd saves for backward inside the block: ``{storage data_ptr: nbytes}``.

    Distinct storages are counted once (views of one tensor share it) and ``module``'s parameters are left out,
    so ``sum(result.values())`` is the activation memory a forward keeps alive until its backward: the CPU
    stand-in for a CUDA peak-memory measurement.
    """
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield storages


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``; on CUDA the queued kernels are waited for before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def run_metadata(device: torch.device, argv: Optional[Sequence[str]] = None, script: Optional[str] = None) -> dict:
    """The header of a benchmark result: the command that reproduces it (``python SCRIPT ARGS``; ``argv`` None
    means this process's own arguments), date, git commit, library versions, device and machine."""
    import transformers

    root = Path(__file__).resolve().parents[1]
    script = script or sys.argv[0]
    try:
        script = Path(script).resolve().relative_to(root).as_posix()
    except ValueError:  # a script outside the repository: keep the path as given
        script = Path(script).as_posix()
    args = list(sys.argv[1:] if argv is None else argv)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root)
    return dict(
        command=" ".join(["python", script, *args]),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        git=git.stdout.strip() or "unknown",
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        transformers=transformers.__version__,
        device=device_name(device),
        machine=platform.processor() or platform.machine(),
    )


def write_result(out: str | Path, stem: str, result: dict, text: str) -> Path:
    """Write a benchmark's ``OUT/STEM.json`` (the result) and ``OUT/STEM.md`` (``text``); returns the .json path."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(text)
    return out / f"{stem}.json"
