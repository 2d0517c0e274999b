"""Run ``train.py`` and SIGKILL it at a chosen point: the fault injector of tests/test_run_safety.py.

    python tests/kill_at.py POINT N -- TRAIN.PY OVERRIDES...

POINT is where the process kills itself the N-th time it gets there (the product has no hooks: this script
wraps library functions before running train.py in the same interpreter):

    metrics     in the middle of appending the N-th metrics.jsonl line (half a line written)
    manifest    while saving the N-th checkpoint, before its manifest (a .tmp- folder is left)
    prune       in the middle of deleting the N-th pruned checkpoint (after its rename, one file deleted)
    step        at the start of the N-th optimiser step
    final_save  while writing the final weights into output_dir (config.yaml written, the rest not)
    random      after N milliseconds, wherever the run is
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import sys
import threading
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def nth(n: int):
    """A counter that says True on its n-th call."""
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    return hit


def main() -> None:
    point, n = sys.argv[1], int(sys.argv[2])
    script, *overrides = sys.argv[sys.argv.index("--") + 1:]
    out = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))).resolve()
    hit = nth(n)

    from mixlora.train import backend, metrics, state

    if point == "metrics":
        original_log = metrics.MetricsLogger.log

        def log(self, record):
            if hit():
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write('{"step": %d, "loss": 1.' % record["step"])
                die()
            original_log(self, record)

        metrics.MetricsLogger.log = log
    elif point == "manifest":
        original_manifest = state.write_manifest

        def write_manifest(folder):
            if hit():
                die()
            original_manifest(folder)

        state.write_manifest = write_manifest
    elif point == "prune":
        original_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            path = Path(path)
            if path.name.startswith(".trash-") and hit():
                next(p for p in sorted(path.rglob("*")) if p.is_file()).unlink()
                die()
            original_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif point == "step":
        original_step = backend.PlainBackend.step

        def step(self):
            if hit():
                die()
            return original_step(self)

        backend.PlainBackend.step = step
    elif point == "final_save":
        import mixlora.build as build

        original_save = build.save_run

        def save_run(run_dir, stack, config, full_model=False):
            if Path(run_dir).resolve() == out:
                from omegaconf import OmegaConf

                (out / build.RUN_CONFIG).write_text(OmegaConf.to_yaml(config, resolve=True))
                die()
            return original_save(run_dir, stack, config, full_model)

        build.save_run = save_run
    elif point == "random":
        threading.Timer(n / 1000, die).start()
    else:
        raise SystemExit(f"unknown kill point {point!r}")
    sys.argv = [script, *overrides]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
