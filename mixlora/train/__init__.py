"""Training: ``python train.py`` (Hydra) calls :func:`run` on the composed config. See docs/training.md.

Modules: ``settings`` (validated trainer/data/logger nodes), ``validate`` (checks before heavy work),
``data`` (synthetic generation, resumable micro-batch stream), ``optim`` (parameter groups, warmup + cosine),
``backend`` (single-process accumulation/clipping/stepping), ``loop`` (the training loop), ``state``
(run directory, atomic checkpoints, RNG), ``metrics`` (jsonl, wandb, progress bar or batch-log lines),
``routing_health`` (factor-pool usage per module kind, logged with the metrics), ``params`` (counts),
``runner`` (the orchestration: :func:`run`). DeepSpeed code lives in ``mixlora.distributed``.
"""

from .config import compose_config, register_resolvers
from .settings import ConfigError, DataSettings, LoggerSettings, TrainerSettings

register_resolvers()


def run(cfg, overrides=None) -> dict:
    """Train from a composed config; see :func:`mixlora.train.runner.run`."""
    from .runner import run as _run

    return _run(cfg, overrides)


__all__ = ["ConfigError", "DataSettings", "LoggerSettings", "TrainerSettings", "compose_config",
           "register_resolvers", "run"]
