"""Run directories and checkpoints: who owns output_dir, what a checkpoint holds, how it is written atomically.

Run directory (``output_dir``)::

    run.json                       identity of the run: config fingerprint, command line, status, wandb id
    config.yaml, tokenizer/        resolved config and tokenizer (mixlora.build.save_run layout)
    adapter_config.json, adapter_model.safetensors, projector.safetensors      final weights (save_run)
    metrics.jsonl                  one JSON object per logged optimiser step
    summary.json                   the end-of-run summary
    checkpoints/step-000100/       a checkpoint (below); only complete ones ever carry this name
    wandb/                         the wandb run (offline by default)
    eval/                          written later by eval.py (deleted with the run by overwrite=true)
    train_rank<r>.log              Hydra's log file per process

Checkpoint ``checkpoints/step-XXXXXX/``: the save_run layout at that step (so ``mixlora.build.load_run`` loads a
checkpoint like a finished run) plus::

    trainer_state.json             step, data position (epoch, micro-batches consumed in it), tokens, world size,
                                   the config fingerprint and the scheduled length
    optimizer.pt, scheduler.pt     single-process runs;  deepspeed/  DeepSpeed runs (per-rank optimiser partitions)
    rng/rank<r>.pt                 python, numpy, torch (and CUDA) generator states of every rank (mixlora.train.rng)
    manifest.json                  written last: every other file with its size and sha256

Writing goes to ``checkpoints/.tmp-step-XXXXXX`` and ends with one ``os.replace`` onto the final name, so a
crash at any moment leaves either the previous complete checkpoints or the new one, never a torn folder.
A checkpoint counts as complete only when its manifest is there and its files match it (sizes always; sha256
too, except under ``deepspeed/``, whose per-rank partitions are large and read only by their own ranks):
``resume=true`` skips a damaged newest checkpoint, saying which file and why, and continues from the newest
complete one. Old checkpoints are pruned by renaming them to ``.trash-*`` first, so a kill in the middle of a
deletion never leaves a half-deleted folder under a checkpoint's name; leftovers (``.tmp-*``, ``.old-*``,
``.trash-*``) are removed when the run starts again.

What ``output_dir`` may already hold, and what each combination of ``resume``/``overwrite`` does
(:func:`plan_output_dir`); nothing there is deleted without ``overwrite=true``, except the files of a run that
never finished a step (a failed start), which the same command replaces:

    finished run              resume=true: "already finished", nothing runs (exit 0); neither: refused
    stopped or killed run     resume=true: continues from its newest complete checkpoint; refused if it has none
    run that never trained    started again by any command for that output_dir
    another config            refused (resume=PATH into it too); overwrite=true replaces it

The *fingerprint* is the resolved config minus the keys that may change when a run is continued
(:data:`RESUMABLE_KEYS`: where it runs, how long, how often it saves and logs); a checkpoint resumes only into
a run with the same fingerprint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .rng import RNG_DIR, rng_state
from .settings import ConfigError

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_FORMAT = "mixlora-run/1"
STATE_FORMAT = "mixlora-train-state/1"
CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mixlora-checkpoint-manifest/1"
# Folders in checkpoints/ that only a save or a prune in progress leaves (a kill leaves them behind).
TEMP_PREFIXES = (".tmp-", ".old-", ".trash-")
# Files and folders a run writes into output_dir (a folder holding any of them holds a run).
RUN_OUTPUTS = (RUN_FILE, "config.yaml", "tokenizer", "adapter_config.json", "adapter_model.safetensors",
               "projector.safetensors", "model.safetensors", METRICS, SUMMARY, CHECKPOINTS, "wandb", "eval")
# What a run writes only after it has trained: the mark of a run that got past its first step.
TRAINED_OUTPUTS = ("adapter_model.safetensors", "model.safetensors", "projector.safetensors", SUMMARY, "eval")
# Keys that may differ between a run and its continuation.
RESUMABLE_KEYS = ("output_dir", "resume", "overwrite", "logger", "trainer.max_steps", "trainer.save_every",
                  "trainer.keep_checkpoints", "trainer.log_every", "trainer.progress", "trainer.progress_bar",
                  "data.num_workers", "data.cache_dir", "data.image_memory_mb")


# ---------------------------------------------------------------------------------------------- fingerprint
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    return {prefix: node}


def fingerprint(config: dict) -> dict[str, Any]:
    """The resolved config (a plain dict) flattened to dotted keys, without :data:`RESUMABLE_KEYS`."""
    flat = _flatten(config)
    return {k: v for k, v in sorted(flat.items())
            if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 8) -> list[str]:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


# ---------------------------------------------------------------------------------------------- output dir
@dataclass
class OutputPlan:
    """What to do with output_dir: ``mode`` "fresh", "resume" (from ``checkpoint``) or "done" (a finished run
    and resume=true: nothing to do); ``wipe``: delete the run outputs found there first (overwrite=true, or a
    run that never finished a step); ``note``: said when the run starts (skipped checkpoints, restarts)."""

    output_dir: Path
    mode: str
    checkpoint: Optional[Path] = None
    wipe: bool = False
    note: str = ""


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints of a run by name, oldest first (temporary and trash folders are ignored); whether each is
    complete is :func:`checkpoint_problem`'s question."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def _sha256(path: Path) -> str:
    from mixlora.checkpoint import hash_file

    return hash_file(path).hexdigest()


def _hashed(relative: str) -> bool:
    return not relative.startswith("deepspeed/")


def write_manifest(folder: Path) -> None:
    """List every file of ``folder`` with its size (and sha256, see the module docstring); written last."""
    files = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"size": path.stat().st_size, **({"sha256": _sha256(path)} if _hashed(rel) else {})}
    write_json(Path(folder) / MANIFEST, {"format": MANIFEST_FORMAT, "files": files})


_verified: dict[tuple, Optional[str]] = {}  # (path, size, mtime) of every file -> problem


def checkpoint_problem(folder: Path) -> Optional[str]:
    """None if ``folder`` is a complete checkpoint (its files match its manifest), else what is wrong with it."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"it has no {MANIFEST} (its save did not finish, or an older version wrote it)"
    # stat() is cheap, hashing is not: a folder whose files have not changed since it was verified is not re-read
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())
    if key in _verified:
        return _verified[key]
    try:
        meta = json.loads(manifest.read_text())
        files = meta["files"] if meta.get("format") == MANIFEST_FORMAT else None
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        files, why = None, str(err)
    else:
        why = f"format is not {MANIFEST_FORMAT}"
    if not isinstance(files, dict):
        problem = f"{manifest} is unreadable ({why})"
    else:
        problem = None
        for rel, entry in files.items():
            path = folder / rel
            if not path.is_file():
                problem = f"{path} is missing"
            elif path.stat().st_size != entry.get("size"):
                problem = f"{path} has {path.stat().st_size} bytes, the manifest says {entry.get('size')}"
            elif "sha256" in entry and _sha256(path) != entry["sha256"]:
                problem = f"{path} does not match its sha256 in the manifest (the file is damaged)"
            if problem:
                break
    _verified[key] = problem
    return problem


def latest_complete_checkpoint(output_dir: Path) -> tuple[Optional[Path], list[str]]:
    """(newest complete checkpoint or None, a line for each newer one that was skipped and why)."""
    skipped = []
    for ckpt in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, skipped
        skipped.append(f"checkpoint {ckpt.name} is damaged and skipped: {problem}")
    return None, skipped


def remove_leftovers(output_dir: Path) -> None:
    """Delete what an interrupted save or prune left in checkpoints/ (never a checkpoint by its own name)."""
    root = Path(output_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TEMP_PREFIXES):
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def _trash(path: Path) -> None:
    """Delete a folder by first renaming it out of the way (atomic), so a kill never leaves it half-deleted."""
    trash = path.parent / f".trash-{path.name}-{time.time_ns()}"
    os.replace(path, trash)
    shutil.rmtree(trash)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file written by appends. A torn last line (a kill while appending) is
    dropped with a warning; a damaged line elsewhere is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if i == len(lines):  # no newline after it: the append was cut off
                logger.warning("%s: dropping an incomplete last line (the run was killed while writing it)", path)
                break
            raise ConfigError(f"{path} line {i} is not JSON ({err}); delete that line, or pass overwrite=true to "
                              "start the run again") from None
    return records


def read_run_file(output_dir: Path) -> Optional[dict]:
    path = Path(output_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); pass overwrite=true to replace that run") from err
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise ConfigError(f"{path} is not a {RUN_FORMAT} file; pass overwrite=true to replace that run")
    return meta


def read_trainer_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise ConfigError(f"resume: {checkpoint} is not a checkpoint folder ({TRAINER_STATE} is missing); pass "
                          f"resume=true for the latest checkpoint of output_dir, or a folder such as "
                          f"OUTPUT_DIR/{CHECKPOINTS}/{STEP_PREFIX}000100")
    try:
        state = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path} cannot be read ({err}): the checkpoint is damaged; resume from another one") \
            from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path} is not a {STATE_FORMAT} file")
    return state


def other_checkpoint_hint(damaged: Path) -> str:
    """Where else to resume from: the newest complete checkpoint older than ``damaged`` in the same run."""
    step = int(damaged.name[len(STEP_PREFIX):]) if damaged.name[len(STEP_PREFIX):].isdigit() else None
    run_dir = damaged.parent.parent
    for ckpt in reversed(list_checkpoints(run_dir)):
        if step is not None and int(ckpt.name[len(STEP_PREFIX):]) < step and checkpoint_problem(ckpt) is None:
            return f"resume from the previous complete one with resume={ckpt}"
    return "no earlier complete checkpoint of that run is left; pass overwrite=true to start again from step 0"


def plan_output_dir(output_dir: str | os.PathLike, current: dict[str, Any], resume: Any, overwrite: bool) -> OutputPlan:
    """Decide how output_dir is used, or raise ConfigError (read-only; see the module docstring's table).

    ``current``: fingerprint of this run's config. ``resume``: False, True or a checkpoint path.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={str(out)!r} exists and is not a folder; choose another output_dir")
    if resume not in (False, True) and not isinstance(resume, (str, os.PathLike)):
        raise ConfigError(f"resume must be true, false or a checkpoint folder, got {resume!r}")
    if resume is not False and overwrite:
        raise ConfigError("resume and overwrite are both set: resume continues the run in output_dir, overwrite "
                          "deletes it; choose one")
    present = sorted(n for n in RUN_OUTPUTS if (out / n).exists())
    meta = read_run_file(out) if present else None
    same = meta is not None and meta.get("fingerprint") == current
    status = (meta or {}).get("status")
    named = list_checkpoints(out)
    never_trained = (meta is not None and not named and not read_jsonl(out / METRICS)
                     and not any((out / n).exists() for n in TRAINED_OUTPUTS))

    def differences() -> str:
        if meta is None:
            return "its files have no run.json"
        return "config differs: " + "; ".join(fingerprint_diff(meta.get("fingerprint", {}), current))

    if present and overwrite:
        return OutputPlan(out, "fresh", wipe=True, note=f"overwrite=true: replacing the run in {out}")
    if present and never_trained and not isinstance(resume, (str, os.PathLike)):
        return OutputPlan(out, "fresh", wipe=True, note=f"{out} holds a run that stopped before its first step "
                                                        f"(status {status!r}): starting it again")
    if isinstance(resume, (str, os.PathLike)) and resume is not True:
        ckpt = Path(resume)
        problem = checkpoint_problem(ckpt)
        if problem is not None and (ckpt / MANIFEST).is_file():
            raise ConfigError(f"resume={str(ckpt)!r} is damaged: {problem}; " + other_checkpoint_hint(ckpt))
        state = read_trainer_state(ckpt)
        if state["fingerprint"] != current:
            raise ConfigError(f"resume={str(ckpt)!r} was written by a run with another config ("
                              + "; ".join(fingerprint_diff(state["fingerprint"], current))
                              + "); resume it with that run's config")
        if present and not same and not never_trained:
            raise ConfigError(f"output_dir={str(out)!r} holds a different run ({differences()}); pass another "
                              "output_dir to continue from the checkpoint there")
        note = f"resuming from {ckpt}" + (f" (not verified: {problem})" if problem else "")
        return OutputPlan(out, "resume", ckpt, wipe=present and never_trained, note=note)
    if present and not same:
        if resume is True:
            raise ConfigError(f"resume=true, but output_dir={str(out)!r} holds a different run ({differences()}). "
                              "Resume with that run's config, or pass overwrite=true (deletes it) or another output_dir")
        raise ConfigError(f"output_dir={str(out)!r} holds a different run ({differences()}); pass another output_dir, "
                          "or overwrite=true to delete it")
    if not present:
        return OutputPlan(out, "fresh")
    # The same run is there, and it has trained.
    ckpt, skipped = latest_complete_checkpoint(out)
    if resume is True and status == "finished":
        return OutputPlan(out, "done", note=f"{out} holds this run, finished: nothing to do (pass overwrite=true "
                                            "instead of resume=true to train it again; that deletes it)")
    if resume is True and ckpt is not None:
        return OutputPlan(out, "resume", ckpt, note="; ".join([*skipped, f"resuming from {ckpt}"]))
    if resume is True:
        why = "; ".join(skipped) if skipped else "it saved none (trainer.save_every=0, or killed before the first)"
        if status in ("running", "failed") and not skipped:
            # killed (or crashed) before any checkpoint: nothing to continue, nothing finished to lose
            return OutputPlan(out, "fresh", wipe=True, note=f"resume=true, but no complete checkpoint ({why}): "
                                                            "starting from step 0")
        raise ConfigError(f"resume=true, but output_dir={str(out)!r} holds this run ({status}) with no complete "
                          f"checkpoint to continue from ({why}); its outputs stay. Pass overwrite=true to train it "
                          "again from step 0 (deletes them), or another output_dir")
    last = f"last checkpoint {named[-1].name}" if named else "no checkpoint"
    if status == "finished":
        raise ConfigError(f"output_dir={str(out)!r} already holds this run, finished ({last}); pass overwrite=true "
                          "to train it again (deletes it), or another output_dir")
    raise ConfigError(f"output_dir={str(out)!r} already holds this run ({last}); pass resume=true to continue "
                      "it, overwrite=true to start it again, or another output_dir")


def wipe_run_outputs(output_dir: Path) -> None:
    """Delete the run outputs (RUN_OUTPUTS) in output_dir; anything else there (logs, user files) stays."""
    for name in RUN_OUTPUTS:
        p = Path(output_dir) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_json(path: Path, data: Any) -> None:
    from mixlora.checkpoint import atomic_write

    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


# ---------------------------------------------------------------------------------------------- checkpoints
@dataclass
class TrainerState:
    """Where training stands after ``step`` optimiser steps: the data position is ``epoch`` and the number of
    micro-batches (per rank) consumed in it, ``batch_in_epoch``."""

    step: int
    epoch: int
    batch_in_epoch: int
    tokens: int
    world_size: int
    total_steps: int
    elapsed_s: float

    def to_json(self, fingerprint_: dict) -> dict:
        return {"format": STATE_FORMAT, **asdict(self), "fingerprint": fingerprint_}

    @classmethod
    def from_json(cls, data: dict) -> "TrainerState":
        return cls(**{k: data[k] for k in ("step", "epoch", "batch_in_epoch", "tokens", "world_size", "total_steps",
                                            "elapsed_s")})


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def save_checkpoint(output_dir: Path, state: TrainerState, fingerprint_: dict, dist, backend, write_weights,
                    keep: Optional[int]) -> Path:
    """Write checkpoint ``step-XXXXXX`` atomically. Collective: every rank calls it.

    ``write_weights(folder)`` writes the save_run layout (collective under ZeRO-3: it gathers; rank 0 writes).
    ``backend.save_state(folder)`` writes the optimiser and scheduler (DeepSpeed: every rank its partition).
    Then every rank writes its RNG state, rank 0 the trainer state, and rank 0 renames the folder into place and
    keeps the ``keep`` newest checkpoints.
    """
    root = Path(output_dir) / CHECKPOINTS
    final = root / checkpoint_name(state.step)
    tmp = root / f".tmp-{final.name}"
    if dist.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crash during an earlier save
        (tmp / RNG_DIR).mkdir(parents=True)
    dist.barrier()
    write_weights(tmp)
    backend.save_state(tmp)
    torch.save(rng_state(), tmp / RNG_DIR / f"rank{dist.rank}.pt")
    if dist.is_main:
        write_json(tmp / TRAINER_STATE, state.to_json(fingerprint_))
    dist.barrier()
    if dist.is_main:
        write_manifest(tmp)
        _fsync_tree(tmp)
        if final.exists():  # a checkpoint of an abandoned trajectory (resumed from an earlier step): replace it
            stale = root / f".old-{final.name}-{time.time_ns()}"
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale)
        else:
            os.replace(tmp, final)
        if keep is not None:
            for old in list_checkpoints(output_dir)[:-keep]:
                _trash(old)
    dist.barrier()
    return final


def _fsync_tree(folder: Path) -> None:
    """Flush the files' data to disk before the rename makes the checkpoint visible."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def truncate_metrics(output_dir: Path, step: int) -> None:
    """Keep only metrics records up to ``step`` (a killed run may have logged steps past its last checkpoint, or
    been killed in the middle of a line)."""
    path = Path(output_dir) / METRICS
    if not path.is_file():
        return
    kept = [json.dumps(r) for r in read_jsonl(path) if r.get("step", 0) <= step]
    from mixlora.checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in kept)))
