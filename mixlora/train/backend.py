"""The single-process training backend: gradient accumulation, clipping, optimiser and scheduler steps.

Same interface as :class:`mixlora.distributed.DeepSpeedBackend`, so ``mixlora.train.loop`` is written once::

    with backend.autocast(): out = backend.forward(**inputs)   # one micro-batch
    backend.backward(out.loss)                                   # after each micro-batch
    grad_norm = backend.step()                                   # once per optimiser step
    backend.lr(); backend.save_state(folder); backend.load_state(folder); backend.gathered(params)

Precision: with ``autocast_dtype=bfloat16`` (GPU or CPU) the forward runs under
``torch.autocast(device.type, bfloat16)`` while the trainable parameters stay float32 (the optimiser's master
copy; the runner casts them up): autocast rounds the operands of the matmul-like ops (linear, matmul, bmm,
attention) to bf16 (unit roundoff u = 2⁻⁸) and their kernels accumulate in fp32; the LLM upcasts its RMSNorm and
the loss logits to fp32. The backward gives fp32 gradients to the fp32 parameters, so updates far below a
weight's bf16 spacing are kept. Frozen weights keep the dtype the model config gave them.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


class PlainBackend:
    """Accumulate ``accumulation`` micro-batches (each loss divided by it), then clip and step.

    Args:
        model: the module to train (already on ``device``).
        optimizer, scheduler: built on the model's trainable parameters; the scheduler steps once per update.
        accumulation: micro-batches per optimiser step.
        max_grad_norm: clip the global L2 norm of the gradients (None: no clipping, the norm is still reported).
        autocast_dtype: None (fp32) or torch.bfloat16 (autocast on ``device``'s type, CPU included).
        device: where the model lives.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, accumulation: int,
                 max_grad_norm: Optional[float], autocast_dtype: Optional[torch.dtype], device: torch.device):
        self.module = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.accumulation = accumulation
        self.max_grad_norm = max_grad_norm
        self.autocast_dtype = autocast_dtype
        self.device = device
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def forward(self, **inputs: torch.Tensor):
        return self.module(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> float:
        """Clip, update, advance the schedule, clear gradients; returns the pre-clipping gradient norm."""
        limit = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, limit)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save_state(self, folder: Path) -> None:
        torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        torch.save(self.scheduler.state_dict(), folder / SCHEDULER_FILE)

    def load_state(self, folder: Path) -> None:
        path = folder / OPTIMIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no optimiser state ({OPTIMIZER_FILE} is missing); a checkpoint "
                                    "written by trainer.strategy=deepspeed resumes only under DeepSpeed")
        self.optimizer.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        self.scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=True))

    def gathered(self, params: list[nn.Parameter]):
        return nullcontext()
