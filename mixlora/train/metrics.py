"""Metrics: a JSON-lines file, wandb (offline / online / disabled) and the progress report. Rank 0 only.

``metrics.jsonl`` holds one object per logged optimiser step::

    {"step": 10, "epoch": 0, "loss": 5.91, "lr": 0.001, "grad_norm": 0.82, "tokens": 14480,
     "tokens_per_s": 2210.5, "elapsed_s": 6.55,
     "routing": {"q_proj": {"used_a": 0.94, "used_b": 0.88, "entropy_a": 0.97, "entropy_b": 0.95}, ...}}

``loss`` is the mean of the micro-batch losses of that step (each a mean over its supervised tokens), averaged
over ranks; ``tokens`` counts real (non-padding) positions seen so far by all ranks, image positions included;
``tokens_per_s`` is over the ``log_every`` steps since the previous record. ``routing`` (MixLoRA runs only) is
the pool usage per module kind over the same window, all ranks' micro-batches
(:mod:`mixlora.train.routing_health`). wandb gets the same values, ``routing`` flattened to
``routing/q_proj/used_a`` and so on.

Progress (``trainer.progress``, :mod:`mixlora.progress`): a tqdm bar advanced every step, or, in a batch log,
one line per record: ``step 120/500 (24%) | loss 2.3412 | lr 9.8e-04 | 3,210 tok/s | elapsed 0:06:01 |
ETA 0:19:03`` (plus ``| pool used min A .. B ..`` for MixLoRA), through the ``mixlora.train.metrics`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from mixlora.progress import train_line

from .routing_health import routing_summary
from .settings import LoggerSettings
from .state import METRICS, read_jsonl

logger = logging.getLogger(__name__)


def wandb_values(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without ``step``, nested dicts flattened to ``a/b/c`` keys (wandb's panel grouping)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    walk("", {k: v for k, v in record.items() if k != "step"})
    return out


class MetricsLogger:
    """Append records to ``output_dir/metrics.jsonl`` and to a wandb run; report progress.

    Args:
        output_dir: the run directory (wandb writes ``output_dir/wandb/``).
        settings: the logger node (wandb mode, project, ...).
        config: the resolved config, stored with the wandb run.
        total_steps, start_step: the step the run stops at and the step it starts after (progress, ETA).
        run_id: wandb run id to reuse when resuming (None: a new one).
        enabled: False on ranks other than 0 (everything becomes a no-op).
        progress: ``bar`` (tqdm), ``lines`` (a log line per record) or ``none`` (resolved by
            :func:`mixlora.progress.resolve_progress`).
    """

    def __init__(self, output_dir: Path, settings: LoggerSettings, config: dict, total_steps: int, start_step: int,
                 run_id: Optional[str], enabled: bool = True, progress: str = "bar"):
        if progress not in ("bar", "lines", "none"):
            raise ValueError(f"MetricsLogger progress must be 'bar', 'lines' or 'none', got {progress!r}")
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS
        self.wandb_run = None
        self.bar = None
        self.run_id = run_id
        self.lines = enabled and progress == "lines"
        self.total_steps, self.start_step = total_steps, start_step
        if not enabled:
            return
        if settings.mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=settings.project, entity=settings.entity, group=settings.group, tags=settings.tags,
                name=settings.name or Path(output_dir).name, dir=str(output_dir), mode=settings.mode,
                config=config, id=run_id, resume="allow" if run_id else None, settings=wandb.Settings(quiet=True))
            self.run_id = self.wandb_run.id
        if progress == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self.t0 = time.perf_counter()  # this process's clock for the lines' elapsed time and ETA

    @property
    def wandb_dir(self) -> Optional[str]:
        return None if self.wandb_run is None else os.path.dirname(self.wandb_run.dir)

    def progress(self, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(wandb_values(record), step=record["step"])
        if self.lines:
            step = record["step"]
            logger.info("%s", train_line(step, self.total_steps, record["loss"], record["lr"], record["tokens_per_s"],
                                         time.perf_counter() - self.t0, step - self.start_step,
                                         routing_summary(record.get("routing") or {})))

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, str)):
                    self.wandb_run.summary[k] = v

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def read_metrics(output_dir: Path) -> list[dict]:
    return read_jsonl(Path(output_dir) / METRICS)
