"""Config helpers: the OmegaConf resolvers the configs use, and composing configs/train.yaml from Python.

Resolvers (registered on import of ``mixlora.train``):
    ${mul:a,b}   a * b   e.g. ``alpha: ${mul:2,${.rank}}`` (LoRA's alpha = 2r, released MixLoRA's alpha = 2E)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf



def shipped_config_dir() -> Path:
    """The shipped Hydra config tree (``train.yaml``, ``eval.yaml`` and the groups).

    Its one real location is ``configs/`` of the source tree; ``pyproject.toml`` ships that folder as the package
    data ``mixlora/configs`` (``package-dir``), so an installed package (wheel, ``pip install .``) finds it beside
    this package. A source checkout or an editable install has no ``mixlora/configs``; there the tree is the
    ``configs/`` folder that pyproject.toml maps, next to the ``mixlora`` folder.
    """
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no Hydra config tree: neither {package / 'configs'} (installed package data) nor "
                            f"{package.parent / 'configs'} (source checkout) holds train.yaml; reinstall the "
                            "package or pass config_dir explicitly")



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
    with initialize_config_dir(config_dir=str(config_dir or shipped_config_dir()), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))
