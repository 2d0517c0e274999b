"""One source of defaults: the adapter/trainer/data/logger YAML options start from their dataclass's schema.

The dataclasses (``AdapterConfig``, ``TrainerSettings``, ``DataSettings``, ``LoggerSettings``) hold every default;
``mixlora.train.config.register_schemas`` stores them as ``schema/<group>`` and each YAML option of the group
starts from that node. These tests read the YAML files as plain text (independently of Hydra) and check that no
option restates a default, that every composed node holds exactly the dataclass's fields, and that a field no
YAML mentions is still overridable without ``+``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mixlora.inject import AdapterConfig
from mixlora.train import DataSettings, LoggerSettings, TrainerSettings, compose_config
from mixlora.train.config import schema_defaults

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"adapter": AdapterConfig, "trainer": TrainerSettings, "data": DataSettings, "logger": LoggerSettings}
# Options outside the schema: `adapter=none` is not an AdapterConfig (no adapter at all).
NOT_SCHEMA = {("adapter", "none")}
OPTIONS = [(group, path.stem) for group in SCHEMAS for path in sorted((ROOT / "configs" / group).glob("*.yaml"))
           if (group, path.stem) not in NOT_SCHEMA]


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_group_has_options_on_the_schema():
    assert {g for g, _ in OPTIONS} == set(SCHEMAS) and len(OPTIONS) >= 10


@pytest.mark.parametrize("group,option", OPTIONS)
def test_an_option_sets_only_what_differs_from_the_dataclass_defaults(group, option):
    raw = yaml.safe_load((ROOT / "configs" / group / f"{option}.yaml").read_text())
    defaults = raw.pop("defaults")
    # the option starts from the schema, directly or through the option it extends (zero2 -> single)
    assert f"/schema/{group}@_here_" in defaults or any(d in defaults for d in ("single", "offline")), defaults
    raw.pop("_target_", None)
    cls = SCHEMAS[group]
    fields = _fields(cls)
    assert set(raw) <= fields, f"{group}/{option}.yaml sets keys {sorted(set(raw) - fields)} that {cls.__name__} lacks"
    default = schema_defaults(cls)
    restated = {k: v for k, v in raw.items() if v == default[k] and v != "???"}  # ??? = "must be set": not a default
    assert not restated, f"{group}/{option}.yaml restates {cls.__name__} defaults {restated}; drop them"


@pytest.mark.parametrize("group,option", OPTIONS)
def test_the_composed_node_holds_exactly_the_dataclass_fields(group, option):
    cfg = compose_config([f"{group}={option}", "data.image_folder=/images"] if option == "vision_flan"
                         else [f"{group}={option}"])
    keys = set(cfg[group].keys()) - {"_target_"}
    assert keys == _fields(SCHEMAS[group])


def test_fields_no_yaml_mentions_override_without_plus_and_keep_their_defaults():
    cfg = compose_config(["adapter=lora", "trainer.tf32=false", "logger.project=elsewhere"])
    assert cfg.adapter.kind == "lora" and cfg.adapter.rank == 4 and cfg.adapter.alpha == 8  # alpha = 2r
    assert cfg.adapter.dropout == 0.05  # the preset's choice; AdapterConfig's own default is 0.0 (peft's)
    assert AdapterConfig().dropout == 0.0
    assert cfg.trainer.tf32 is False and cfg.logger.project == "elsewhere"
    assert cfg.trainer.optimizer.betas == [0.9, 0.999] and cfg.trainer.optimizer.lr == 1e-3
    assert cfg.data.template == "vicuna_v1" and cfg.data.on_error == "raise"  # DataSettings' defaults
    assert compose_config(["adapter.dropout=0.0"]).adapter.dropout == 0.0


def test_a_data_config_must_name_its_files():
    with pytest.raises(TypeError, match="image_folder"):
        DataSettings(annotations="train.json")  # no default: a data config states its image folder (or null)
    assert compose_config(["data=vision_flan"]).data._get_node("image_folder")._is_missing()
