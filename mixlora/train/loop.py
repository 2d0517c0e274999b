"""The training loop, written out once for both backends (plain single-process and DeepSpeed).

Why not the HF Trainer: the routing context must enclose forward *and* backward of every micro-batch (gradient
checkpointing re-runs forwards during backward, and MixLoRA layers need the routing mask then), the model is
our own LlavaMixModel with its own save layout, and the released code's Trainer subclass (a copy of transformers
4.33's training loop, its ``llava_trainer.py:494-1009``) pins transformers, accelerate and DeepSpeed versions. The
loop below is ~80 lines; the Trainer would need
a subclass overriding training_step, the saving code and the sampler anyway.

One optimiser step::

    for each of `accumulation` micro-batches (this rank's share of the global batch):
        with model.routing(batch["routing_mask"], batch.get("source_rows"), instruction_mask=...):
            # routing_mask: bool [B, L], the prompt tokens MixLoRA routes on; source_rows: long [B], only under
            # task routing (each row's task-definition row, appended by the collator; labels -100 there);
            # instruction_mask: bool [B, L], only for routing_tokens="instruction"
            loss = model(input_ids, attention_mask, pixel_values, labels).loss   (under autocast on GPU/bf16)
            backend.backward(loss)                        # accumulates loss / accumulation
    grad_norm = backend.step()                            # clip, update, advance the LR schedule
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .state import TrainerState

MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "labels")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_KEYS}


def source_rows(batch: dict, device: torch.device):
    """The batch's ``source_rows`` on ``device`` (task routing: each row's definition row), or None."""
    rows = batch.get("source_rows")
    return None if rows is None else rows.to(device)


def routing_context(model, batch: dict, device: torch.device):
    """``model.routing`` for a collated batch: its routing mask, source rows and instruction mask, on ``device``."""
    instruction = batch.get("instruction_mask")
    return model.routing(batch["routing_mask"].to(device), source_rows(batch, device),
                         instruction_mask=None if instruction is None else instruction.to(device))


def train_steps(*, backend, stream, dist, metrics, state: TrainerState, stop_step: int, accumulation: int,
                log_every: int, save_every: int, checkpoint: Callable[[TrainerState], None],
                device: torch.device) -> list[float]:
    """Run optimiser steps ``state.step + 1 .. stop_step``, updating ``state`` in place; returns the step losses.

    ``checkpoint(state)`` is called after every ``save_every``-th step (0: never). Metrics go to ``metrics`` at
    step 1, every ``log_every`` steps and at the last step; the bar advances every step. For a model with MixLoRA
    layers each record also carries ``routing``: the pool usage over the micro-batches since the previous record,
    summed over ranks (:class:`~mixlora.train.routing_health.RoutingCounter`; every rank counts, and the sum at
    log time is a collective, reached by every rank at the same steps).
    """
    from .routing_health import RoutingCounter

    model = backend.module
    model.train()
    routing = RoutingCounter.of(model, device)
    stream_iter = stream.iterate(state.epoch, state.batch_in_epoch)
    losses: list[float] = []
    window_tokens, window_start = 0, time.perf_counter()
    segment_start, elapsed_before = time.perf_counter(), state.elapsed_s
    while state.step < stop_step:
        # The rate this update uses: read before the micro-batches, since DeepSpeed's engine advances the
        # scheduler inside the last backward's engine.step().
        lr = backend.lr()
        step_loss, step_tokens = 0.0, 0
        for _ in range(accumulation):
            epoch, consumed, batch = next(stream_iter)
            inputs = to_device(batch, device)
            with routing_context(model, batch, device):
                with backend.autocast():
                    loss = backend.forward(**inputs).loss
                backend.backward(loss)
            if routing is not None:
                routing.add()
            step_loss += float(loss.detach()) / accumulation
            step_tokens += int(batch["attention_mask"].sum())
        grad_norm = backend.step()
        loss_sum, token_sum = dist.all_reduce_sum([step_loss, float(step_tokens)])
        loss_value = loss_sum / dist.world
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss is {loss_value} at step {state.step + 1}; lower "
                                     "trainer.optimizer.lr or enable trainer.max_grad_norm")
        state.step += 1
        state.epoch, state.batch_in_epoch = (epoch + 1, 0) if consumed >= stream.usable else (epoch, consumed)
        state.tokens += int(token_sum)
        state.elapsed_s = elapsed_before + time.perf_counter() - segment_start
        window_tokens += int(token_sum)
        losses.append(loss_value)
        now = time.perf_counter()
        tokens_per_s = window_tokens / max(now - window_start, 1e-9)
        metrics.progress(loss_value, lr, tokens_per_s)
        if state.step % log_every == 0 or state.step == stop_step or state.step == 1:
            record = {"step": state.step, "epoch": state.epoch, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                      "tokens": state.tokens, "tokens_per_s": tokens_per_s, "elapsed_s": round(state.elapsed_s, 3)}
            if routing is not None:
                record["routing"] = routing.read(dist)
            metrics.log(record)
            window_tokens, window_start = 0, now
        if save_every and state.step % save_every == 0:
            checkpoint(state)
    return losses


@torch.no_grad()
def probe_loss(backend, batch: dict, device: torch.device) -> float:
    """Loss of the trained model on a fixed batch in eval mode (no dropout): a value a reloaded run must
    reproduce. Every rank runs it (ZeRO-3 forwards are collective)."""
    model = backend.module
    was_training = model.training
    model.eval()
    try:
        with routing_context(model, batch, device):
            with backend.autocast():
                return float(backend.forward(**to_device(batch, device)).loss)
    finally:
        model.train(was_training)
