"""Everything DeepSpeed and torch.distributed: process-group setup, the ZeRO config, the engine, gathering.

Model and adapter code never imports this module; ``train.py`` and ``mixlora.train`` do.

Launching (docs/training.md): ``torchrun --nproc_per_node N train.py trainer=zero3 ...`` or
``deepspeed --no_local_rank train.py ...`` (Hydra rejects the ``--local_rank`` argument the launcher would add).
A plain ``python train.py trainer=zero2`` runs one DeepSpeed process: the rendezvous variables DeepSpeed needs
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are filled in for a single process. Under SLURM with
one task per GPU (hydra-submitit-launcher), they are derived from the SLURM variables by ``submitit``.

The DeepSpeed config is built from the trainer settings, never with ``"auto"`` values::

    train_batch_size                = global_batch_size
    train_micro_batch_size_per_gpu  = micro_batch_size
    gradient_accumulation_steps     = global / (world x micro)
    gradient_clipping               = max_grad_norm (0 = none)
    bf16.enabled                    = precision resolves to bf16
    zero_optimization               = from the JSON file (configs/deepspeed/zero{2,3}.json)
    zero_allow_untested_optimizer   = true (a torch optimizer: nothing is compiled on CPU)

On CPU the process group uses gloo; the first start on a machine compiles DeepSpeed's small shared-memory
communication op (~50 s, cached under TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn


RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# The only non-tensor classes DeepSpeed's ZeRO checkpoints pickle (found by loading real ZeRO-2/3 checkpoints with
# weights_only=True). Plain data holders: allowing them lets no file name a function to call.
DEEPSPEED_CHECKPOINT_CLASSES = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                                "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                                "deepspeed.runtime.zero.config.ZeroStageEnum",
                                "deepspeed.utils.tensor_fragment.fragment_address")
# Keys the trainer settings own; the JSON file may only carry ZeRO and engine tuning options.
RESERVED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                 "gradient_clipping", "optimizer", "scheduler", "bf16", "fp16", "amp",
                 "zero_allow_untested_optimizer")
DS_STATE_DIR = "deepspeed"
DS_TAG = "state"


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment; (0, 1, 0) when none is set."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        _export_slurm_env()
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def _export_slurm_env() -> None:
    """One SLURM task per GPU (hydra-submitit-launcher): derive RANK, WORLD_SIZE, ... via submitit."""
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as err:
        raise RuntimeError(
            "this process runs as one of several SLURM tasks but RANK/WORLD_SIZE are not set, and submitit (which "
            "derives them) is not installed; `pip install hydra-submitit-launcher`, or launch with torchrun") from err
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_rendezvous_env() -> None:
    """Fill in the variables DeepSpeed needs for a single process started without a launcher."""
    present = [v for v in RENDEZVOUS_VARS if v in os.environ]
    if not present:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
        return
    missing = [v for v in RENDEZVOUS_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(f"the launcher set {present} but not {missing}; launch with torchrun or "
                           "`deepspeed --no_local_rank`, or unset them all for a single process")


# ---------------------------------------------------------------------------------------------- process context
@dataclass
class DistContext:
    """Where this process stands: rank, world size, device. ``world == 1`` without a process group is the
    plain single-process run; all collective helpers are then no-ops."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def barrier(self) -> None:
        if self.initialized and self.world > 1:
            torch.distributed.barrier()

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a short list of floats over the ranks (float64)."""
        if not (self.initialized and self.world > 1):
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not (self.initialized and self.world > 1):
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _collective_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def single_process(device: torch.device) -> DistContext:
    return DistContext(0, 1, 0, device)


def init_deepspeed(device_kind: str) -> DistContext:
    """Initialise the DeepSpeed process group (gloo on CPU, nccl on CUDA) and return this rank's context."""
    import deepspeed

    ensure_rendezvous_env()
    rank, world, local_rank = env_world()
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device_kind == "cuda" else "gloo")
    return DistContext(rank, world, local_rank, device)


# ---------------------------------------------------------------------------------------------- config
def load_deepspeed_json(path: str | os.PathLike) -> dict:
    """Read a ZeRO config file and check it: JSON object, no "auto" values, no keys the trainer owns."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trainer.deepspeed_config {str(p)!r} does not exist (relative paths are resolved "
                                "against the current directory; trainer=zero2 / zero3 name the shipped configs/deepspeed/zero2.json "
                                "and zero3.json by their absolute path)")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: the DeepSpeed config must be a JSON object")
    reserved = sorted(k for k in cfg if k in RESERVED_KEYS)
    if reserved:
        raise ValueError(f"{p} sets {reserved}, which train.py derives from the trainer config (batch sizes, "
                         "clipping, precision, optimiser, schedule); remove them from the file and set trainer.* "
                         "instead")
    autos = list(_auto_values(cfg))
    if autos:
        raise ValueError(f"{p} has \"auto\" values at {autos}; write numbers (train.py does not fill them in)")
    stage = cfg.get("zero_optimization", {}).get("stage")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{p}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return cfg


def _auto_values(node: Any, where: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _auto_values(v, f"{where}.{k}" if where else k)
    elif node == "auto":
        yield where


def build_deepspeed_config(zero_json: dict, global_batch_size: int, micro_batch_size: int, world_size: int,
                           max_grad_norm: Optional[float], bf16: bool) -> dict:
    """The full DeepSpeed config (see the module docstring); ``zero_json`` from :func:`load_deepspeed_json`."""
    accumulation, rest = divmod(global_batch_size, micro_batch_size * world_size)
    if rest or accumulation < 1:
        raise ValueError(f"global batch {global_batch_size} is not divisible by world_size {world_size} x micro batch "
                         f"{micro_batch_size}")
    cfg = json.loads(json.dumps(zero_json))  # deep copy
    cfg.update({
        "train_batch_size": global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": float(max_grad_norm or 0.0),
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    })
    return cfg


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


@contextmanager
def partitioned_init(ds_config: dict) -> Iterator[Any]:
    """ZeRO-3: keep transformers' ``HfDeepSpeedConfig`` alive while the model is built, so ``from_pretrained``
    loads the weights straight into partitions (each rank holds 1/world of them). Yields the config object;
    keep a reference for the whole run (transformers holds it only weakly)."""
    from transformers.integrations import HfDeepSpeedConfig

    holder = HfDeepSpeedConfig(ds_config)
    yield holder


def uses_zero3(ds_config: Optional[dict]) -> bool:
    return ds_config is not None and zero_stage(ds_config) == 3


# ---------------------------------------------------------------------------------------------- engine
def weights_only_load(path: str, map_location: Any = None) -> Any:
    """``torch.load(weights_only=True)`` that also accepts :data:`DEEPSPEED_CHECKPOINT_CLASSES`; a file naming
    anything else fails with ``pickle.UnpicklingError`` (naming it) instead of running it."""
    import importlib

    classes = []
    for dotted in DEEPSPEED_CHECKPOINT_CLASSES:
        module, name = dotted.rsplit(".", 1)
        classes.append(getattr(importlib.import_module(module), name))
    import pickle
    import re

    with torch.serialization.safe_globals(classes):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            what = f"the global {found.group(1)}" if found else "an object torch.load(weights_only=True) refuses"
            raise pickle.UnpicklingError(f"{path} names {what}, which a checkpoint may not hold (unpickling it could "
                                         "run code); it was not loaded") from None


class DeepSpeedBackend:
    """The training backend over a DeepSpeed engine; same interface as ``mixlora.train.backend.PlainBackend``.

    ``backward`` calls ``engine.backward`` (which divides by the accumulation) and ``engine.step`` (which updates,
    clips and steps the scheduler only at accumulation boundaries), so the loop calls them after every
    micro-batch and ``step()`` once per optimiser step to read the gradient norm.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ds_config: dict,
                 dist: DistContext, leaf_module_types: Iterable[type] = ()):
        import deepspeed

        self.ds_config = ds_config
        self.zero3 = uses_zero3(ds_config)
        if self.zero3:
            # Frozen towers whose forward reads parameters outside their submodules' forward calls (open_clip's
            # forward_intermediates) must be gathered as a whole.
            from deepspeed.utils import set_z3_leaf_modules

            types = list(leaf_module_types)
            if types:
                set_z3_leaf_modules(model, types)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.module = self.engine.module
        self.dist = dist
        self.dtype = torch.bfloat16 if ds_config.get("bf16", {}).get("enabled") else torch.float32

    def autocast(self):
        return nullcontext()  # DeepSpeed casts the module itself

    def forward(self, **inputs: torch.Tensor):
        pixels = inputs.get("pixel_values")
        if pixels is not None and pixels.is_floating_point():
            inputs["pixel_values"] = pixels.to(self.dtype)
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def step(self) -> Optional[float]:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save_state(self, folder: Path) -> None:
        """Collective: every rank writes its optimiser partition (and the scheduler) under ``folder/deepspeed``."""
        self.engine.save_checkpoint(str(folder / DS_STATE_DIR), tag=DS_TAG, exclude_frozen_parameters=True)

    def load_state(self, folder: Path) -> None:
        path = folder / DS_STATE_DIR
        if not (path / DS_TAG).is_dir():
            raise FileNotFoundError(f"{folder} holds no DeepSpeed state ({path / DS_TAG} is missing); it was written "
                                    "by trainer.strategy=single, resume with the same strategy")
        # DeepSpeed's checkpoint engine unpickles with weights_only=False, which runs whatever a file names: a
        # checkpoint someone shared could execute code. Route its loads through weights_only=True instead.
        self.engine.checkpoint_engine.load = weights_only_load
        load_path, _ = self.engine.load_checkpoint(str(path), tag=DS_TAG, load_module_strict=False,
                                                   load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load its state from {path}")

    def gathered(self, params: list[nn.Parameter]):
        """ZeRO-3: full tensors of ``params`` on every rank inside the context (read-only); no-op otherwise."""
        if not self.zero3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
