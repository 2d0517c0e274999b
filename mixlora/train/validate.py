"""Checks that run before any heavy work (data tokenisation, model weights, DeepSpeed start-up).

:func:`preflight` turns the composed config into a :class:`Plan` or raises :class:`ConfigError` naming the key
and the fix, for: unset ``???`` values, unknown keys and invalid option values (trainer, data, logger, adapter),
rank >= num_factors, a missing DeepSpeed file or one with ``"auto"``/reserved keys, a global batch not
divisible by world_size x micro batch, a multi-process launch of the single-process trainer, a CUDA device
that is not available, model paths without weights (LLM folder, CLIP folder, projector, init checkpoint,
tokenizer folder), a model builder that is not one of the project's (``mixlora.build.BUILDER_TARGETS``), target
modules the LLM does not have (checked on an empty "meta" copy of a local LLM), and
an output_dir holding another run (see :mod:`mixlora.train.state`), a missing training file or image
folder (unless the synthetic suite is to be generated first; then they are checked right after), and task
routing without task definitions (or definitions without task routing, or a training task without one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .settings import ConfigError, DataSettings, LoggerSettings, TrainerSettings
from .state import OutputPlan, fingerprint, plan_output_dir

logger = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class Plan:
    """Everything decided before training: validated settings, process layout, device, precision, output."""

    config: dict  # the resolved config (plain containers)
    trainer: TrainerSettings
    data: DataSettings
    logger: LoggerSettings
    adapter: Any  # mixlora.AdapterConfig, or None for adapter=none
    world: int
    rank: int
    accumulation: int
    device_kind: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "bf16"
    ds_config: Optional[dict]
    zero3_init: bool
    output: OutputPlan
    fingerprint: dict


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???`` (without resolving interpolations, which would fail on them first)."""
    from omegaconf import DictConfig, ListConfig

    keys = node.keys() if isinstance(node, DictConfig) else range(len(node)) if isinstance(node, ListConfig) else []
    found = []
    for key in keys:
        child = node._get_node(key)
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(child, (DictConfig, ListConfig)):
            if not child._is_missing() and not child._is_none() and not child._is_interpolation():
                found += _missing_keys(child, name)
        elif not child._is_interpolation() and child._is_missing():
            found.append(name)
    return found


def _resolved(cfg: Any) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, dict):
        return cfg
    missing = sorted(_missing_keys(cfg))
    if missing:
        raise ConfigError(f"config value(s) {missing} are not set (??? in the config); pass them on the command line, "
                          f"e.g. {missing[0]}=...")
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config does not resolve: {err}") from err


def coerce_adapter(node: Any):
    """``adapter`` node -> ``AdapterConfig`` (None for ``kind: none``); ConfigError for bad keys or values."""
    from mixlora.inject import AdapterConfig

    if not isinstance(node, dict) or "kind" not in node:
        raise ConfigError(f"the adapter config needs a `kind` (none | lora | mixlora), got {node!r}")
    if node["kind"] == "none":
        extra = sorted(set(node) - {"kind", "_target_"})
        if extra:
            raise ConfigError(f"adapter kind=none takes no other keys, got {extra}")
        return None
    try:
        adapter = AdapterConfig.coerce(node)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter: {err}") from err
    return adapter


def check_task_routing(adapter, data: DataSettings) -> None:
    """``adapter.routing_source=task`` needs ``data.task_definitions`` (and prefill decode routing), and
    ``data.task_definitions`` is only for it: definition rows that no layer routes on would cost compute for
    nothing. The file itself is checked with the data paths (:func:`mixlora.train.data.check_task_definitions`)."""
    task = getattr(adapter, "kind", None) == "mixlora" and adapter.routing_source == "task"
    if task and data.task_definitions is None:
        raise ConfigError("adapter.routing_source=task routes every instance on a task-definition row of its batch, "
                          "built from data.task_definitions, which is null; set data.task_definitions=PATH (a JSON "
                          "object task_name -> definition text; the synthetic suite writes "
                          "task_definitions.json beside train.json) or use routing_source=instance or random")
    if task and adapter.decode_routing != "prefill":
        raise ConfigError(f"adapter.routing_source=task needs adapter.decode_routing=prefill, got "
                          f"{adapter.decode_routing!r}: with per-step decode routing a generated token would be "
                          "routed on the definition row's own new token instead of the definition (refused at "
                          "evaluation); set adapter.decode_routing=prefill")
    if not task and data.task_definitions is not None:
        what = "no adapter" if adapter is None else (
            f"adapter kind={adapter.kind}" if adapter.kind != "mixlora" else
            f"adapter.routing_source={adapter.routing_source}")
        raise ConfigError(f"data.task_definitions is set but {what} does not route on task definitions, so the "
                          "definition rows added to every batch would be computed and never used; set "
                          "data.task_definitions=null, or adapter=mixlora adapter.routing_source=task")


def resolve_device(trainer: TrainerSettings) -> tuple[str, str]:
    """(device kind, precision) after ``auto``: cuda and bf16 when a GPU is there, else cpu and fp32.

    ``precision=bf16`` runs on either device (docs/training.md, precision): the plain loop keeps fp32 master weights
    and runs the forward under ``torch.autocast(device, bfloat16)``; DeepSpeed gets ``bf16.enabled`` (a bf16 module,
    fp32 master partitions), with gloo on the CPU.
    """
    has_cuda = torch.cuda.is_available()
    if trainer.device == "cuda" and not has_cuda:
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu")
    kind = trainer.device if trainer.device != "auto" else ("cuda" if has_cuda else "cpu")
    precision = trainer.precision if trainer.precision != "auto" else ("bf16" if kind == "cuda" else "fp32")
    return kind, precision


def check_world(trainer: TrainerSettings, world: int) -> int:
    """Gradient accumulation = global / (world x micro); ConfigError unless exact."""
    if trainer.strategy == "single" and world > 1:
        raise ConfigError(f"WORLD_SIZE={world} (a multi-process launch) but trainer.strategy=single runs one process; "
                          "use trainer=zero2 or trainer=zero3 with torchrun")
    per_step = world * trainer.micro_batch_size
    accumulation, rest = divmod(trainer.global_batch_size, per_step)
    if rest or accumulation == 0:
        fits = [per_step * k for k in (1, 2, 4)]
        raise ConfigError(f"trainer.global_batch_size={trainer.global_batch_size} is not divisible by world_size "
                          f"({world}) x trainer.micro_batch_size ({trainer.micro_batch_size}) = {per_step}; choose a "
                          f"multiple such as {fits}, or another micro_batch_size")
    return accumulation


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(p)) for p in WEIGHT_PATTERNS)


def check_model_paths(model: dict) -> None:
    """Local files the model config names exist (and LLM/CLIP folders hold weights)."""
    tok = model.get("tokenizer") or {}
    if tok.get("kind") == "pretrained" and tok.get("path") and not Path(tok["path"]).is_dir():
        raise ConfigError(f"model.tokenizer.path: tokenizer folder {tok['path']!r} does not exist")
    builder = model.get("builder") or {}
    llm = builder.get("llm") if isinstance(builder.get("llm"), dict) else {}
    if llm.get("path"):
        folder = Path(llm["path"])
        if not folder.is_dir():
            raise ConfigError(f"model.builder.llm.path: LLM folder {str(folder)!r} does not exist (a local checkpoint "
                              "folder is required; nothing is downloaded)")
        if llm.get("gguf_file"):
            if not (folder / llm["gguf_file"]).is_file():
                raise ConfigError(f"model.builder.llm.gguf_file: {llm['gguf_file']!r} is not in {folder}")
        elif not (folder / "config.json").is_file() or not _has_weights(folder):
            raise ConfigError(f"model.builder.llm.path: {folder} holds no model weights (needs config.json and "
                              f"{' or '.join(WEIGHT_PATTERNS)}); copy the checkpoint there")
    vision = builder.get("vision") if isinstance(builder.get("vision"), dict) else {}
    if vision.get("path"):
        folder = Path(vision["path"])
        if not folder.is_dir() or not (folder / "config.json").is_file() or not _has_weights(folder):
            raise ConfigError(f"model.builder.vision.path: {folder} is not a CLIP checkpoint folder with weights "
                              "(config.json + *.safetensors or pytorch_model.bin)")
    if vision.get("pretrained") and not Path(vision["pretrained"]).is_file():
        raise ConfigError(f"model.builder.vision.pretrained: weights file {vision['pretrained']!r} does not exist")
    if builder.get("projector_path") and not Path(builder["projector_path"]).is_file():
        raise ConfigError(f"model.builder.projector_path: {builder['projector_path']!r} does not exist (LLaVA's "
                          "mm_projector.bin)")
    if model.get("init_checkpoint") and not Path(model["init_checkpoint"]).is_file():
        raise ConfigError(f"model.init_checkpoint: {model['init_checkpoint']!r} does not exist")
    pool = model.get("image_pool", 1)
    if pool is not None and (not isinstance(pool, int) or isinstance(pool, bool) or pool < 1):
        raise ConfigError(f"model.image_pool must be a positive integer (1 = no pooling), got {pool!r}")
    cache = model.get("feature_cache")
    if cache is not None and (not isinstance(cache, str) or Path(cache).is_file()):
        raise ConfigError(f"model.feature_cache must be a folder path (or null), got {cache!r}")


def check_builder(model: dict) -> None:
    """Only the project's model builders (or ones trusted by name) are called: checked before any work is done
    (see :func:`mixlora.build.check_builder_targets`)."""
    from mixlora.build import UntrustedConfigError, check_builder_targets

    try:
        check_builder_targets(model.get("builder"), source="the model config (configs/model/*.yaml + overrides)")
    except UntrustedConfigError as err:
        raise ConfigError(str(err)) from err


def check_targets_on_meta(model: dict, adapter) -> None:
    """For a local LLM (``builder.llm.path``), find the adapter targets on an empty meta-device copy built from
    its config.json; unknown target modules fail here rather than after the weights are loaded."""
    builder = model.get("builder") or {}
    llm = builder.get("llm") if isinstance(builder.get("llm"), dict) else {}
    if adapter is None or not llm.get("path") or llm.get("gguf_file"):
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from mixlora.inject import find_targets

    config = AutoConfig.from_pretrained(llm["path"], local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    try:
        find_targets(skeleton, adapter)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter.target_modules: {err}") from err


def resolve_zero3_init(trainer: TrainerSettings, model: dict, ds_config: Optional[dict]) -> bool:
    """Build under HfDeepSpeedConfig? ``auto``: when ZeRO-3 loads an LLM checkpoint from a local path (random-init
    models are built whole, so they match a single-process run bit for bit, then partitioned by DeepSpeed)."""
    from mixlora.distributed import uses_zero3

    if not uses_zero3(ds_config):
        if trainer.zero3_init == "on":
            raise ConfigError("trainer.zero3_init=on needs ZeRO stage 3 (trainer=zero3)")
        return False
    if trainer.zero3_init != "auto":
        init = trainer.zero3_init == "on"
    else:
        llm = (model.get("builder") or {}).get("llm")
        init = isinstance(llm, dict) and bool(llm.get("path"))
    if init and model.get("init_checkpoint"):
        raise ConfigError("model.init_checkpoint cannot be loaded into a model built partitioned (zero3_init); set "
                          "trainer.zero3_init=off")
    if init and model.get("feature_cache"):
        raise ConfigError("model.feature_cache needs the whole vision tower to key its entries, but zero3_init builds "
                          "it partitioned; set trainer.zero3_init=off or model.feature_cache=null")
    return init


def preflight(cfg: Any, world: Optional[int] = None, rank: Optional[int] = None) -> Plan:
    """Validate the composed config (see the module docstring) and decide how the run goes."""
    from mixlora.distributed import build_deepspeed_config, env_world, load_deepspeed_json

    config = _resolved(cfg)
    for key in ("output_dir", "model", "adapter", "data", "trainer", "logger"):
        if key not in config:
            raise ConfigError(f"the config has no `{key}`; compose it from configs/train.yaml")
    trainer = TrainerSettings.coerce(config["trainer"])
    data = DataSettings.coerce(config["data"])
    log = LoggerSettings.coerce(config["logger"])
    adapter = coerce_adapter(config["adapter"])
    check_task_routing(adapter, data)
    train_llm = config["model"].get("train_llm", False)
    if not isinstance(train_llm, bool):
        raise ConfigError(f"model.train_llm must be true or false, got {train_llm!r}")
    if train_llm and adapter is not None:
        raise ConfigError("model.train_llm=true trains every LLM weight (stage-1 base / full fine-tuning); "
                          "combine it with adapter=none, not with an adapter")
    if not isinstance(config.get("seed"), int) or isinstance(config.get("seed"), bool) or config["seed"] < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {config.get('seed')!r}")
    if not isinstance(config.get("overwrite"), bool):
        raise ConfigError(f"overwrite must be true or false, got {config.get('overwrite')!r}")
    if not config.get("output_dir"):
        raise ConfigError("output_dir is empty; pass output_dir=PATH")
    env_rank, env_size, _ = env_world()
    world = env_size if world is None else world
    rank = env_rank if rank is None else rank
    accumulation = check_world(trainer, world)
    if trainer.schedule_steps and trainer.max_steps and trainer.max_steps > trainer.schedule_steps:
        raise ConfigError(f"trainer.max_steps={trainer.max_steps} exceeds the scheduled {trainer.schedule_steps} "
                          f"steps (trainer.schedule_steps={trainer.schedule_steps}); raise trainer.schedule_steps "
                          "(max_steps only stops a run early, it never stretches the schedule)")
    device_kind, precision = resolve_device(trainer)
    ds_config = None
    if trainer.strategy == "deepspeed":
        try:
            zero = load_deepspeed_json(trainer.deepspeed_config)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"trainer.deepspeed_config: {err}") from err
        ds_config = build_deepspeed_config(zero, trainer.global_batch_size, trainer.micro_batch_size, world,
                                           trainer.max_grad_norm, bf16=precision == "bf16")
    zero3_init = resolve_zero3_init(trainer, config["model"], ds_config)
    if data.generate is None or Path(data.annotations).is_file():
        from .data import check_data_paths

        check_data_paths(data)  # else: checked after the synthetic suite is generated
    check_builder(config["model"])
    check_model_paths(config["model"])
    check_targets_on_meta(config["model"], adapter)
    fp = fingerprint(config)
    output = plan_output_dir(config["output_dir"], fp, config.get("resume", False), config["overwrite"])
    return Plan(config=config, trainer=trainer, data=data, logger=log, adapter=adapter, world=world, rank=rank,
                accumulation=accumulation, device_kind=device_kind, precision=precision, ds_config=ds_config,
                zero3_init=zero3_init, output=output, fingerprint=fp)
