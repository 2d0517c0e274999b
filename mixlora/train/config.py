"""Config helpers: the OmegaConf resolvers the configs use, and composing configs/train.yaml from Python.

Resolvers (registered on import of ``mixlora.train``):
    ${mul:a,b}   a * b   e.g. ``alpha: ${mul:2,${.rank}}`` (LoRA's alpha = 2r, released MixLoRA's alpha = 2E)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _mul(a, b):
    return a * b


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", _mul)


def compose_config(overrides: Sequence[str] = (), config_dir: Optional[str | Path] = None,
                   config_name: str = "train") -> DictConfig:
    """``configs/train.yaml`` composed with Hydra overrides, as ``python train.py OVERRIDES`` would see it
    (without the ``hydra`` node). For tests, notebooks and scripts."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir or CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))
