"""Metrics: a JSON-lines file, wandb (offline / online / disabled) and the progress bar. Rank 0 only.

``metrics.jsonl`` holds one object per logged optimiser step::

    {"step": 10, "epoch": 0, "loss": 5.91, "lr": 0.001, "grad_norm": 0.82, "tokens": 14480,
     "tokens_per_s": 2210.5, "elapsed_s": 6.55}

``loss`` is the mean of the micro-batch losses of that step (each a mean over its supervised tokens), averaged
over ranks; ``tokens`` counts real (non-padding) positions seen so far by all ranks, image positions included;
``tokens_per_s`` is over the ``log_every`` steps since the previous record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from .settings import LoggerSettings
from .state import METRICS, read_jsonl



class MetricsLogger:
    """Append records to ``output_dir/metrics.jsonl`` and to a wandb run; drive a tqdm bar.

    Args:
        output_dir: the run directory (wandb writes ``output_dir/wandb/``).
        settings: the logger node (wandb mode, project, ...).
        config: the resolved config, stored with the wandb run.
        total_steps, start_step: for the progress bar.
        run_id: wandb run id to reuse when resuming (None: a new one).
        enabled: False on ranks other than 0 (everything becomes a no-op).
        progress_bar: show tqdm.
    """

    def __init__(self, output_dir: Path, settings: LoggerSettings, config: dict, total_steps: int, start_step: int,
                 run_id: Optional[str], enabled: bool = True, progress_bar: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / METRICS
        self.wandb_run = None
        self.bar = None
        self.run_id = run_id
        if not enabled:
            return
        if settings.mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=settings.project, entity=settings.entity, group=settings.group, tags=settings.tags,
                name=settings.name or Path(output_dir).name, dir=str(output_dir), mode=settings.mode,
                config=config, id=run_id, resume="allow" if run_id else None, settings=wandb.Settings(quiet=True))
            self.run_id = self.wandb_run.id
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

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
            self.wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

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
