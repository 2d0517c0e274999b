"""Validated settings for the ``trainer``, ``data`` and ``logger`` config nodes (configs/{trainer,data,logger}/).

Each node is coerced into a dataclass whose ``__post_init__`` checks every value, so a typo or an impossible
value fails before any heavy work with a message naming the key, the value and the valid choices. Unknown keys
are errors too (``coerce``), like :meth:`mixlora.AdapterConfig.coerce`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from mixlora.options import check_choice
from mixlora.progress import PROGRESS_MODES

STRATEGIES = ("single", "deepspeed")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("cosine", "constant")
ZERO3_INIT = ("auto", "on", "off")
LOGGER_BACKENDS = ("wandb",)
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A configuration or input problem found before training starts; the message names the key and the fix."""


def _to_dict(value: Any, node: str) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    except Exception as exc:  # not an OmegaConf node either: say what we got
        raise ConfigError(f"the {node} config must be a mapping, got {type(value).__name__}") from exc


def _coerce(cls, value: Any, node: str):
    if isinstance(value, cls):
        return value
    values = _to_dict(value, node)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {node} config key(s) {unknown}; valid keys: {sorted(known)}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # check_choice raises ValueError: re-label it with the node name
        raise ConfigError(f"{node}.{err}" if str(err)[:1].isalpha() else f"{node}: {err}") from err


def _positive_int(node: str, name: str, value: Any, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
    if not ok:
        what = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(f"{node}.{name} must be {what}{' or null' if allow_none else ''}, got {value!r}")


def _check_optimizer_class(target: Any) -> None:
    """``trainer.optimizer._target_`` names an importable torch optimizer class: checked here, since the
    optimiser is only created after the data and the model are loaded."""
    import importlib

    import torch

    module, _, name = str(target).rpartition(".")
    try:  # not hydra's get_class: it logs its own error lines before raising
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:  # ValueError: no module part ("AdamW")
        raise ConfigError(f"trainer.optimizer._target_={target!r} cannot be imported ({type(err).__name__}: {err}); "
                          "fix the name, e.g. trainer.optimizer._target_=torch.optim.AdamW") from err
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"trainer.optimizer._target_={target!r} is not a torch.optim.Optimizer subclass; use an "
                          "optimizer class, e.g. torch.optim.AdamW")


@dataclass
class TrainerSettings:
    """The ``trainer`` node: strategy, length, batch, optimiser, schedule, precision, checkpoints, logging.

    Length: the LR schedule spans ``schedule_steps`` optimiser steps if set, else ``epochs`` x steps per epoch;
    training runs that long unless ``max_steps`` stops it earlier (the schedule is unchanged, so stopping and
    resuming gives the same run as not stopping).

    Batch: ``global_batch_size = world_size x micro_batch_size x accumulation``; accumulation is derived and the
    division must be exact.

    ``optimizer`` is a Hydra node with ``_target_`` (a torch optimizer class) and ``_partial_: true``; it is called
    with two parameter groups (matrices with its ``weight_decay``, 1-D parameters with none).

    Progress: ``progress`` is ``auto`` (a bar when stdout and stderr are terminals, else a plain log line per
    metrics record, i.e. every ``log_every`` steps), ``bar``, ``lines`` or ``none`` (:mod:`mixlora.progress`);
    ``progress_bar`` is its older boolean spelling, see :attr:`progress_mode`.
    """

    strategy: str = "single"
    deepspeed_config: Optional[str] = None
    zero3_init: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    tf32: bool = True
    epochs: int = 1
    schedule_steps: Optional[int] = None
    max_steps: Optional[int] = None
    global_batch_size: int = 8
    micro_batch_size: int = 8
    optimizer: dict = field(default_factory=lambda: {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3,
                                                     "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0})
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: Optional[int] = None
    min_lr_ratio: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    gradient_checkpointing: bool = False
    save_every: int = 100
    keep_checkpoints: Optional[int] = 2
    log_every: int = 10
    progress: str = "auto"
    progress_bar: Optional[bool] = None

    def __post_init__(self) -> None:
        node = "trainer"
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("zero3_init", self.zero3_init, ZERO3_INIT)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.strategy == "deepspeed" and not self.deepspeed_config:
            raise ConfigError("trainer.strategy=deepspeed needs trainer.deepspeed_config (e.g. "
                              "configs/deepspeed/zero2.json); use trainer=zero2 or trainer=zero3")
        if self.strategy == "single" and self.deepspeed_config:
            raise ConfigError(f"trainer.deepspeed_config={self.deepspeed_config!r} is set but trainer.strategy=single "
                              "ignores it; use trainer=zero2/zero3, or set trainer.deepspeed_config=null")
        _positive_int(node, "epochs", self.epochs)
        _positive_int(node, "schedule_steps", self.schedule_steps, allow_none=True)
        _positive_int(node, "max_steps", self.max_steps, allow_none=True)
        _positive_int(node, "global_batch_size", self.global_batch_size)
        _positive_int(node, "micro_batch_size", self.micro_batch_size)
        _positive_int(node, "warmup_steps", self.warmup_steps, allow_none=True, allow_zero=True)
        _positive_int(node, "save_every", self.save_every, allow_zero=True)
        _positive_int(node, "keep_checkpoints", self.keep_checkpoints, allow_none=True)
        _positive_int(node, "log_every", self.log_every)
        if not (isinstance(self.warmup_ratio, (int, float)) and 0.0 <= self.warmup_ratio < 1.0):
            raise ConfigError(f"trainer.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0.0 <= self.min_lr_ratio <= 1.0):
            raise ConfigError(f"trainer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.max_grad_norm is not None and not (isinstance(self.max_grad_norm, (int, float))
                                                   and self.max_grad_norm > 0):
            raise ConfigError(f"trainer.max_grad_norm must be > 0 or null (no clipping), got {self.max_grad_norm!r}")
        for flag in ("tf32", "gradient_checkpointing"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"trainer.{flag} must be true or false, got {getattr(self, flag)!r}")
        check_choice("progress", self.progress, PROGRESS_MODES)
        if self.progress_bar is not None:
            if not isinstance(self.progress_bar, bool):
                raise ConfigError(f"trainer.progress_bar must be true, false or null, got {self.progress_bar!r}")
            clash = self.progress in (("lines", "none") if self.progress_bar else ("bar",))
            if clash:
                raise ConfigError(f"trainer.progress_bar={str(self.progress_bar).lower()} contradicts "
                                  f"trainer.progress={self.progress}; set only trainer.progress (auto | bar | lines "
                                  "| none)")
        self.optimizer = dict(self.optimizer)
        if "_target_" not in self.optimizer:
            raise ConfigError("trainer.optimizer needs a _target_ (e.g. torch.optim.AdamW) and _partial_: true")
        _check_optimizer_class(self.optimizer["_target_"])
        if self.optimizer.get("_partial_") is not True:
            raise ConfigError("trainer.optimizer needs `_partial_: true`: the trainer passes the parameter groups")
        lr = self.optimizer.get("lr")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
            raise ConfigError(f"trainer.optimizer.lr must be a positive number, got {lr!r}")

    @classmethod
    def coerce(cls, value: Any) -> "TrainerSettings":
        return _coerce(cls, value, "trainer")

    @property
    def lr(self) -> float:
        return float(self.optimizer["lr"])

    @property
    def progress_mode(self) -> str:
        """``progress`` with the older ``progress_bar`` folded in: ``progress_bar=false`` means no bar, so under
        ``progress=auto`` it gives the plain lines (one per record, cheap anywhere); ``true`` keeps ``auto``."""
        if self.progress == "auto" and self.progress_bar is False:
            return "lines"
        return self.progress


@dataclass
class DataSettings:
    """The ``data`` node: a Vision-Flan/LLaVA JSON list and its image folder, loaded by ``ConversationDataset``.

    ``generate``: arguments of :func:`mixlora.data.synthetic.generate_suite`; when set and ``annotations`` is
    missing, the suite is generated into the annotations' folder first. ``max_samples``: train on a seeded random
    subset. The loader options (template, max_length, overlong, on_error, check_images) are those of
    :class:`mixlora.data.dataset.ConversationDataset`.

    ``tasks``: train only on samples whose ``task_name`` matches one of these shell-style patterns (``*``, ``?``,
    ``[...]``; case-insensitive, since Vision-Flan mixes ``coco+...`` and ``INATURALIST+...``), e.g.
    ``[scienceqa+question_answering]`` or ``["coco+*"]`` (the per-task LoRA specialists of the paper's Table 2).
    null: every task. Every pattern must match at least one sample (:func:`mixlora.train.data.select_tasks`);
    the filter is applied before ``max_samples``.

    ``task_definitions``: path of a JSON object task_name -> definition text (``mixlora.data.definitions``), for
    ``adapter.routing_source=task`` only (and required by it): every task_name of the training file must have
    one; each micro-batch then gains one definition row per task. null: no definition rows.

    ``image_memory_mb``: MiB of processed images each process keeps in memory after their first read
    (:class:`mixlora.data.images.ImageMemo`; 0 = off). It changes the speed, never the pixels, so it may change when
    resuming.

    ``annotations`` and ``image_folder`` have no default: every data config names its files (``image_folder:
    null`` for records whose image paths are absolute, or that have no images).
    """

    annotations: str
    image_folder: Optional[str]  # required: a config states it (null: records with absolute image paths or none)
    template: str = "vicuna_v1"
    max_length: int = 2048
    overlong: str = "truncate_answer"
    on_error: str = "raise"
    check_images: bool = True
    max_samples: Optional[int] = None
    tasks: Optional[list] = None
    default_task_name: Optional[str] = None  # for records without task_name (captions, LLaVA-665K)
    num_workers: int = 0
    image_memory_mb: int = 0  # MiB of processed images kept in memory per process (0: off); same pixels either way
    cache_dir: Optional[str] = None
    generate: Optional[dict] = None
    task_definitions: Optional[str] = None

    def __post_init__(self) -> None:
        from mixlora.data.dataset import ON_ERROR, OVERLONG_POLICIES
        from mixlora.data.templates import TEMPLATES

        if not isinstance(self.annotations, str) or not self.annotations:
            raise ConfigError(f"data.annotations must be a path to a JSON file, got {self.annotations!r}")
        check_choice("template", self.template, tuple(TEMPLATES))
        check_choice("overlong", self.overlong, OVERLONG_POLICIES)
        check_choice("on_error", self.on_error, ON_ERROR)
        _positive_int("data", "max_length", self.max_length)
        _positive_int("data", "max_samples", self.max_samples, allow_none=True)
        _positive_int("data", "num_workers", self.num_workers, allow_zero=True)
        _positive_int("data", "image_memory_mb", self.image_memory_mb, allow_zero=True)
        if self.tasks is not None:
            bad = isinstance(self.tasks, str) or not isinstance(self.tasks, (list, tuple)) or not self.tasks
            if bad or not all(isinstance(t, str) and t.strip() for t in self.tasks):
                raise ConfigError(f"data.tasks must be null or a non-empty list of task-name patterns, e.g. "
                                  f"data.tasks=[scienceqa+question_answering] or data.tasks=['coco+*'], got "
                                  f"{self.tasks!r}")
            self.tasks = list(self.tasks)
            lowered = [t.lower() for t in self.tasks]
            twice = sorted({t for t in self.tasks if lowered.count(t.lower()) > 1})
            if twice:
                raise ConfigError(f"data.tasks lists {twice} more than once; list each pattern once")
        if self.generate is not None:
            self.generate = dict(self.generate)
        if self.task_definitions is not None and (not isinstance(self.task_definitions, str)
                                                  or not self.task_definitions.strip()):
            raise ConfigError(f"data.task_definitions must be null or the path of a JSON file task_name -> "
                              f"definition text, got {self.task_definitions!r}")

    @classmethod
    def coerce(cls, value: Any) -> "DataSettings":
        return _coerce(cls, value, "data")


@dataclass
class LoggerSettings:
    """The ``logger`` node: wandb ``mode`` offline (files under output_dir/wandb), online or disabled."""

    backend: str = "wandb"
    mode: str = "offline"
    project: str = "mixlora"
    entity: Optional[str] = None
    name: Optional[str] = None
    group: Optional[str] = None
    tags: list = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, LOGGER_BACKENDS)
        check_choice("mode", self.mode, WANDB_MODES)
        self.tags = list(self.tags)

    @classmethod
    def coerce(cls, value: Any) -> "LoggerSettings":
        return _coerce(cls, value, "logger")
