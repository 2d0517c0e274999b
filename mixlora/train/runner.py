"""``run(cfg)``: one training run from a composed config, in the order that keeps failures cheap.

1. :func:`~mixlora.train.validate.preflight`: every check that needs no data or weights (ConfigError).
2. Process group (DeepSpeed) and the output directory (claim it, or wipe it for overwrite=true).
3. Data files (generate the synthetic suite when configured and missing), tokenizer, model (partitioned for
   ZeRO-3 real weights), adapters injected, checkpoint weights loaded when resuming, parameter counts.
4. Dataset, micro-batch stream, optimiser, schedule, backend (plain or DeepSpeed), optimiser/RNG/data state.
5. The loop (mixlora.train.loop), checkpoints every ``save_every`` steps and at the end.
6. Final weights (mixlora.build.save_run layout, gathered from ZeRO-3 partitions), a check loss on a fixed
   batch, ``summary.json`` and a one-screen summary.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

from mixlora.progress import resolve_progress
from mixlora.runlock import RunLock

from .data import MicroBatchStream, build_dataset, check_data_paths, ensure_synthetic, probe_batch
from .loop import probe_loss, train_steps
from .metrics import MetricsLogger, read_metrics
from .optim import build_optimizer, build_scheduler, warmup_steps_for
from .params import count_parameters, format_counts
from .settings import ConfigError
from .rng import load_rng, seed_everything, set_rng_state
from .state import (RUN_FILE, RUN_FORMAT, SUMMARY, TrainerState, list_checkpoints, plan_output_dir, read_run_file,
                    read_trainer_state, remove_leftovers, save_checkpoint, other_checkpoint_hint, truncate_metrics,
                    wipe_run_outputs, write_json)
from .validate import Plan, preflight

logger = logging.getLogger("mixlora.train")


def _claim_output_dir(plan: Plan, dist, overrides: list[str]) -> dict:
    """Rank 0 prepares output_dir (wipe / truncate metrics) and (re)writes run.json; returns its content."""
    out = plan.output.output_dir
    meta: dict = {}
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        previous = read_run_file(out) if plan.output.mode == "resume" else None
        if plan.output.wipe:
            wipe_run_outputs(out)
        remove_leftovers(out)
        if plan.output.mode == "resume":
            truncate_metrics(out, read_trainer_state(plan.output.checkpoint)["step"])
        meta = {"format": RUN_FORMAT, "status": "running", "fingerprint": plan.fingerprint,
                "created": (previous or {}).get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
                "command": sys.argv, "overrides": overrides, "world_size": plan.world,
                "wandb_id": (previous or {}).get("wandb_id")}
        write_json(out / RUN_FILE, meta)
        if plan.output.note:
            logger.info(plan.output.note)
    return dist.broadcast_object(meta)


def _build_tokenizer(plan: Plan):
    from mixlora.build import RUN_TOKENIZER, build_tokenizer_from_config

    if plan.output.mode == "resume":
        from transformers import AutoTokenizer

        # The tokenizer the checkpoint was trained with (a local BPE retrained on changed data would differ).
        return AutoTokenizer.from_pretrained(str(plan.output.checkpoint / RUN_TOKENIZER))
    return build_tokenizer_from_config(plan.config["model"]["tokenizer"], [plan.data.annotations])


def _load_resumed_state(checkpoint: Path, load) -> None:
    """Run ``load()`` (reading ``checkpoint``); a file that cannot be read becomes one message naming it and where
    else to resume from. (A manifest-verified checkpoint reads; this covers damage its manifest cannot see.)"""
    import pickle

    from safetensors import SafetensorError

    try:
        load()
    except (SafetensorError, pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"checkpoint {checkpoint} cannot be loaded ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); " + other_checkpoint_hint(checkpoint)) \
            from err


def _load_checkpoint_weights(model, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    from mixlora.build import RUN_MODEL, RUN_PROJECTOR, load_model_weights
    from mixlora.checkpoint import CONFIG_NAME, load_adapter

    if (checkpoint / CONFIG_NAME).is_file():
        load_adapter(model.llm, checkpoint)
    if (checkpoint / RUN_MODEL).is_file():
        load_model_weights(model, checkpoint / RUN_MODEL)
    model.load_projector_state_dict(load_file(str(checkpoint / RUN_PROJECTOR)))


def _git_commit() -> Optional[str]:
    """The code version of this run (None outside a git checkout); a dirty tree is marked."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("git commit unknown: %s", err)
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _saved_params(model, train_llm: bool) -> list:
    """The parameters a run saves: adapter pools and routers and the projector (everything under train_llm)."""
    from mixlora.checkpoint import adapter_state_dict

    if train_llm:
        return list(model.parameters())
    return list(adapter_state_dict(model.llm).values()) + list(model.projector.parameters())


def run(cfg: Any, overrides: Optional[list[str]] = None) -> dict:
    """Train as ``cfg`` (the composed configs/train.yaml) says; returns the summary (also in summary.json).

    Rank 0 holds ``output_dir/.lock`` throughout (:mod:`mixlora.runlock`): a second process on the same
    output_dir stops at once. An exception after output_dir was claimed marks run.json "failed" (with the error),
    so the same command can start a run that never trained again.
    """
    plan = preflight(cfg)
    if plan.output.mode == "done":
        logger.info(plan.output.note)
        print(f"train.py: {plan.output.note}", flush=True)
        return json.loads((plan.output.output_dir / SUMMARY).read_text())
    lock = RunLock(plan.output.output_dir, "training")
    if plan.rank == 0:
        lock.acquire()
    try:
        return _run_locked(plan, overrides, lock)
    finally:
        lock.release()


def _run_locked(plan: Plan, overrides: Optional[list[str]], lock: RunLock) -> dict:
    from mixlora import distributed as D

    if lock.held:
        # Decide again now that no other process can change output_dir (preflight's look was unlocked).
        again = plan_output_dir(plan.output.output_dir, plan.fingerprint, plan.config.get("resume", False),
                                plan.config["overwrite"])
        if (again.mode, again.checkpoint, again.wipe) != (plan.output.mode, plan.output.checkpoint, plan.output.wipe):
            raise ConfigError(f"{plan.output.output_dir} changed while this run was starting (another process "
                              "wrote it); run the command again")
    tr, out = plan.trainer, plan.output.output_dir
    seed = int(plan.config["seed"])
    if tr.strategy == "deepspeed":
        dist = D.init_deepspeed(plan.device_kind)
    else:
        dist = D.single_process(torch.device(plan.device_kind))
    if plan.device_kind == "cuda" and tr.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta = _claim_output_dir(plan, dist, overrides or [])
    dist.barrier()
    try:
        return _train(plan, dist, meta, tr, out, seed)
    except BaseException as err:
        if dist.is_main and meta.get("status") == "running":
            meta.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000])
            write_json(out / RUN_FILE, meta)
        raise


def _train(plan: Plan, dist, meta: dict, tr, out: Path, seed: int) -> dict:
    from omegaconf import OmegaConf

    from mixlora import distributed as D
    from mixlora.build import Stack, build_stack, save_run
    from mixlora.data.collator import TrainingCollator
    from mixlora.inject import inject_adapters

    # ---- data files, tokenizer, model
    if dist.is_main:
        ensure_synthetic(plan.data)
    dist.barrier()
    check_data_paths(plan.data)
    tokenizer = _build_tokenizer(plan)
    seed_everything(seed)
    zero3_ctx = D.partitioned_init(plan.ds_config) if plan.zero3_init else nullcontext()
    with zero3_ctx as ds_holder:
        stack = build_stack(plan.config["model"], tokenizer)
    model = stack.model
    # Adapter factors and routers are initialised from the global RNG: reseed so that they depend on the seed
    # only (not on what building the model drew, which differs under ZeRO-3 partitioned loading) and agree on
    # every rank.
    seed_everything(seed)
    if plan.adapter is not None:
        try:
            inject_adapters(model.llm, plan.adapter)
        except (TypeError, ValueError) as err:  # targets the model does not have, or a non-Linear target
            raise ConfigError(f"adapter.target_modules: {err}") from err
    train_llm = bool(plan.config["model"].get("train_llm", False))
    if train_llm:
        model.llm.requires_grad_(True)  # stage-1 style full training (validated: no adapter)
    if plan.output.mode == "resume":
        _load_resumed_state(plan.output.checkpoint, lambda: _load_checkpoint_weights(model, plan.output.checkpoint))
    counts = count_parameters(model)
    if counts["all"]["trainable"] == 0:
        raise ConfigError("nothing to train: no adapter (adapter=none) and a frozen projector "
                          "(model.builder.freeze_projector=true)")
    router_grad = getattr(plan.adapter, "router_grad", None) if getattr(plan.adapter, "kind", "") == "mixlora" else None
    if dist.is_main:
        logger.info("parameters: %s", format_counts(counts, router_grad))
    if tr.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    # ---- data stream and schedule
    dataset, lengths = build_dataset(plan.data, tokenizer, stack.image_processor, model.num_image_tokens, seed,
                                     instruction_spans=model.routes_on_instruction())
    collate = TrainingCollator(tokenizer.pad_token_id)
    stream = MicroBatchStream(dataset, lengths, tr.micro_batch_size, plan.accumulation, dist.rank, dist.world,
                              collate, seed, num_workers=plan.data.num_workers,
                              pin_memory=plan.device_kind == "cuda")
    total_steps = tr.schedule_steps or tr.epochs * stream.steps_per_epoch
    if tr.max_steps is not None and tr.max_steps > total_steps:
        raise ConfigError(f"trainer.max_steps={tr.max_steps} exceeds the scheduled {total_steps} steps ("
                          + (f"trainer.schedule_steps={tr.schedule_steps}" if tr.schedule_steps else
                             f"{tr.epochs} epoch(s) x {stream.steps_per_epoch} steps")
                          + "); raise trainer.schedule_steps or trainer.epochs")
    stop_step = min(total_steps, tr.max_steps or total_steps)
    warmup = warmup_steps_for(total_steps, tr.warmup_ratio, tr.warmup_steps)

    # ---- optimiser and backend
    if tr.strategy == "single":
        model.to(dist.device)
    if plan.precision == "bf16" and tr.strategy == "single":
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # fp32 master weights; the forward runs under bf16 autocast
    optimizer = build_optimizer(tr.optimizer, model.named_parameters(), dist.device)
    scheduler = build_scheduler(optimizer, total_steps, warmup, tr.lr_schedule, tr.min_lr_ratio)
    if tr.strategy == "deepspeed":
        backend = D.DeepSpeedBackend(model, optimizer, scheduler, plan.ds_config, dist,
                                     leaf_module_types=[type(model.vision_tower)])
    else:
        from .backend import PlainBackend

        backend = PlainBackend(model, optimizer, scheduler, plan.accumulation, tr.max_grad_norm,
                               torch.bfloat16 if plan.precision == "bf16" else None, dist.device)

    state = TrainerState(step=0, epoch=0, batch_in_epoch=0, tokens=0, world_size=dist.world,
                         total_steps=total_steps, elapsed_s=0.0)
    seed_everything(seed + dist.rank)  # dropout streams differ per rank; a resumed run restores them instead
    if plan.output.mode == "resume":
        saved = read_trainer_state(plan.output.checkpoint)
        if saved["world_size"] != dist.world:
            raise ConfigError(f"{plan.output.checkpoint} was written by {saved['world_size']} processes, this run has "
                              f"{dist.world}; resume with the same number (data order and RNG states are per rank)")
        if saved["total_steps"] != total_steps:
            raise ConfigError(f"{plan.output.checkpoint} was scheduled for {saved['total_steps']} steps, this run for "
                              f"{total_steps} (did the training data change?); the LR schedule would not continue")
        _load_resumed_state(plan.output.checkpoint, lambda: backend.load_state(plan.output.checkpoint))
        state = TrainerState.from_json(saved)
        _load_resumed_state(plan.output.checkpoint, lambda: set_rng_state(load_rng(plan.output.checkpoint, dist.rank)))

    # ---- logging, saving
    if dist.is_main:
        logger.info("training steps %d..%d of %d (%d per epoch; global batch %d = %d process(es) x %d x %d "
                    "accumulation); output in %s", state.step + 1, stop_step, total_steps, stream.steps_per_epoch,
                    tr.global_batch_size, dist.world, tr.micro_batch_size, plan.accumulation, out)
    metrics = MetricsLogger(out, plan.logger, plan.config, stop_step, state.step, meta.get("wandb_id"),
                            enabled=dist.is_main, progress=resolve_progress(tr.progress_mode, "trainer.progress"))
    if dist.is_main and metrics.run_id != meta.get("wandb_id"):
        meta["wandb_id"] = metrics.run_id
        write_json(out / RUN_FILE, meta)
    config_node = OmegaConf.create(plan.config)
    params_to_save = _saved_params(model, train_llm)

    def write_weights(folder: Path) -> None:
        with backend.gathered(params_to_save):
            if dist.is_main:
                save_run(folder, Stack(model, tokenizer, stack.image_processor), config_node, full_model=train_llm)
        dist.barrier()

    def checkpoint(st: TrainerState) -> None:
        save_checkpoint(out, st, plan.fingerprint, dist, backend, write_weights, tr.keep_checkpoints)

    start_step, start_tokens = state.step, state.tokens
    t0 = time.perf_counter()
    try:
        losses = train_steps(backend=backend, stream=stream, dist=dist, metrics=metrics, state=state,
                             stop_step=stop_step, accumulation=plan.accumulation, log_every=tr.log_every,
                             save_every=tr.save_every, checkpoint=checkpoint, device=dist.device)
        wall = time.perf_counter() - t0
        if tr.save_every and state.step % tr.save_every and state.step > start_step:
            checkpoint(state)  # the final state, so that a run stopped by max_steps can be resumed
        write_weights(out)
        probe = probe_batch(dataset, tr.micro_batch_size, collate)
        check_loss = probe_loss(backend, probe, dist.device)
        summary = _summary(plan, dist, out, stream, state, start_step, start_tokens, total_steps, losses, wall,
                           counts, check_loss, len(probe["index"]), metrics, router_grad)
        if dist.is_main:
            write_json(out / SUMMARY, summary)
            metrics.summary({"final_loss": summary["loss_last"], "tokens_per_s": summary["tokens_per_s"]})
            meta["status"] = "finished" if state.step == total_steps else "stopped"
            write_json(out / RUN_FILE, meta)
    finally:
        metrics.close()
        if model.feature_cache is not None:  # the features computed so far serve the next run (atomic shards)
            model.feature_cache.flush()
    dist.barrier()
    if dist.is_main:
        print(format_summary(summary), flush=True)
    del ds_holder
    return summary


def _summary(plan, dist, out, stream, state, start_step, start_tokens, total_steps, losses, wall, counts,
             check_loss, probe_size, metrics, router_grad) -> dict:
    records = read_metrics(out) if dist.is_main else []
    history = [r["loss"] for r in records]
    first = history[0] if history else (losses[0] if losses else None)
    window = losses[-min(10, len(losses)):] if losses else []
    steps_run = state.step - start_step
    tokens_per_s = (state.tokens - start_tokens) / wall if steps_run and wall > 0 else None
    return {
        "output_dir": str(out),
        "git_commit": _git_commit(),
        "status": "finished" if state.step == total_steps else "stopped",
        "steps": state.step,
        "steps_this_run": steps_run,
        "scheduled_steps": total_steps,
        "steps_per_epoch": stream.steps_per_epoch,
        "epoch": state.epoch,
        "global_batch_size": plan.trainer.global_batch_size,
        "micro_batch_size": plan.trainer.micro_batch_size,
        "accumulation": plan.accumulation,
        "world_size": dist.world,
        "strategy": plan.trainer.strategy,
        "precision": plan.precision,
        "device": plan.device_kind,
        "loss_first": first,
        "loss_last": losses[-1] if losses else None,
        "loss_last10_mean": sum(window) / len(window) if window else None,
        "check_loss": check_loss,
        "check_batch": f"the first {probe_size} training samples in index order, eval mode",
        "tokens": state.tokens,
        "tokens_per_s": tokens_per_s,
        "tokens_this_run": state.tokens - start_tokens,
        "wall_s": round(wall, 3),
        "parameters": counts,
        "router_grad": router_grad,
        "checkpoints": [p.name for p in list_checkpoints(out)] if dist.is_main else [],
        "wandb_dir": metrics.wandb_dir,
    }


def format_summary(summary: dict) -> str:
    """The one-screen end-of-run text."""
    c = summary["parameters"]
    lines = [
        "─" * 100,
        f"Training {summary['status']}: step {summary['steps']} of {summary['scheduled_steps']} "
        f"({summary['steps_this_run']} in this run; {summary['steps_per_epoch']} steps per epoch)",
        f"  batch      global {summary['global_batch_size']} = {summary['world_size']} process(es) x micro "
        f"{summary['micro_batch_size']} x accumulation {summary['accumulation']}; {summary['strategy']}, "
        f"{summary['device']}, {summary['precision']}",
    ]
    if summary["loss_first"] is not None and summary["loss_last"] is not None:
        lines.append(f"  loss       {summary['loss_first']:.4f} (first step) -> {summary['loss_last']:.4f} (last step); "
                     f"mean of the last 10: {summary['loss_last10_mean']:.4f}; check loss {summary['check_loss']:.4f}")
    if summary["tokens_per_s"]:
        lines.append(f"  speed      {summary['tokens_per_s']:,.0f} tokens/s (real tokens incl. image positions, all "
                     f"processes), {summary['wall_s']:.1f} s of training")
    lines.append("  params     " + format_counts(c, summary.get("router_grad")))
    out = summary["output_dir"]
    lines.append(f"  outputs    {out}/  adapter_model.safetensors, adapter_config.json, projector.safetensors, "
                 "config.yaml, tokenizer/, metrics.jsonl, summary.json")
    if summary["checkpoints"]:
        lines.append(f"  checkpoints {out}/checkpoints/{summary['checkpoints'][-1]}  (continue: resume=true "
                     f"output_dir={out})")
    if summary.get("wandb_dir"):
        lines.append(f"  wandb      {summary['wandb_dir']}")
    lines.append(f"  reload     python -c \"from mixlora.build import load_run; stack, cfg = load_run('{out}')\"")
    lines.append("─" * 100)
    return "\n".join(lines)
