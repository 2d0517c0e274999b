"""Config helpers: the OmegaConf resolvers and config schemas, and composing configs/train.yaml from Python.

Resolvers (registered on import of ``mixlora.train``):
    ${mul:a,b}     a * b   e.g. ``alpha: ${mul:2,${.rank}}`` (LoRA's alpha = 2r, released MixLoRA's alpha = 2E)
    ${config_dir:} the shipped config tree's absolute path, e.g. ``${config_dir:}/deepspeed/zero2.json``, so a
                   shipped file is found from any working directory and in an installed package

Schemas (registered with the resolvers): every default of the ``adapter``, ``trainer``, ``data`` and ``logger``
nodes lives in one place, the dataclass that validates the node (:class:`mixlora.AdapterConfig`,
:class:`~mixlora.train.settings.TrainerSettings`, ``DataSettings``, ``LoggerSettings``). Each is stored in Hydra's
ConfigStore as ``schema/<node>``, and every YAML option of that group starts from it
(``defaults: [/schema/<node>@_here_, _self_]``) and sets only what the option chooses. So the composed node has
every field (``adapter.dropout=0`` overrides without a ``+``), and a default changes in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from mixlora.package_data import config_dir



def shipped_config_dir() -> Path:
    """The shipped Hydra config tree (``train.yaml``, ``eval.yaml`` and the groups): the package data
    ``mixlora.configs`` (the source folder ``configs/``; see :mod:`mixlora.package_data`)."""
    return config_dir()


def _mul(a, b):
    return a * b


def schema_defaults(cls) -> dict:
    """{field: default} of a settings dataclass; a field without a default is ``???`` (Hydra's "must be set")."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = "???"
    return values


def register_schemas() -> None:
    """Store ``schema/{adapter,trainer,data,logger}`` (the dataclasses' defaults) in Hydra's ConfigStore, and
    ``schema/adapter_released`` (the released variant, an overlay on ``schema/adapter``)."""
    from hydra.core.config_store import ConfigStore

    from mixlora.inject import RELEASED_ALPHA_PER_FACTOR, RELEASED_MODES, AdapterConfig

    from .settings import DataSettings, LoggerSettings, TrainerSettings

    store = ConfigStore.instance()
    nodes = {"adapter": {"_target_": "mixlora.inject.AdapterConfig", **schema_defaults(AdapterConfig)},
             # an overlay on schema/adapter: the released variant's fields (AdapterConfig.released's)
             "adapter_released": {**RELEASED_MODES, "alpha": f"${{mul:{RELEASED_ALPHA_PER_FACTOR},${{.num_factors}}}}"},
             "trainer": schema_defaults(TrainerSettings), "data": schema_defaults(DataSettings),
             "logger": schema_defaults(LoggerSettings)}
    for name, node in nodes.items():
        store.store(group="schema", name=name, node=node)


def register_resolvers() -> None:
    """The ``mul`` and ``config_dir`` resolvers and the config schemas (both needed before Hydra composes configs/train.yaml)."""
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", _mul)
    if not OmegaConf.has_resolver("config_dir"):
        OmegaConf.register_new_resolver("config_dir", lambda: str(shipped_config_dir()))
    register_schemas()


def compose_config(overrides: Sequence[str] = (), config_dir: Optional[str | Path] = None,
                   config_name: str = "train") -> DictConfig:
    """``configs/train.yaml`` composed with Hydra overrides, as ``python train.py OVERRIDES`` would see it
    (without the ``hydra`` node). For tests, notebooks and scripts."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir or shipped_config_dir()), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))
