"""The build entry point: :func:`generate_suite` checks its arguments, writes every part of the suite and its
``manifest.json`` (last, so a folder with a manifest is a finished build)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm

from .cvbench import CVBENCH_TASKS, write_cvbench
from .files import _write_json
from .heldout_info import EVAL_INFO
from .mme import MME_SUBTASKS, write_mme
from .pope import write_pope
from .simple_sets import SIMPLE_SETS, write_simple_set
from .stage1 import write_stage1
from .task_texts import write_task_definitions
from .train_tasks import TRAIN_TASKS, write_training


GENERATOR = "mixlora.data.synthetic"  # the manifest's "generator": how a finished build is recognised
SUITE_FILES = ("train.json", "stage1.json", "task_definitions.json", "manifest.json")  # files at the suite's root
_OUTPUTS = SUITE_FILES + ("images", "eval")


def _check_int(name: str, value, lo: int, hi: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is out of range: it must be an integer in [{lo}, {hi}] ({hint}).")
    return value


def generate_suite(out_dir: str | Path, seed: int = 0, image_size: int = 64, per_task: int = 150,
                   eval_per_task: int = 150, mme_images: int = 30, stage1_size: int = 2000, seen_per_task: int = 30,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the whole suite under ``out_dir`` and return the manifest (also written to manifest.json).

    Args:
        out_dir: output folder; it must be empty or absent unless ``overwrite``, which deletes only the suite's own
            outputs (train.json, stage1.json, task_definitions.json, manifest.json, images/, eval/).
        seed: seed of every random stream; the same arguments give byte-identical files.
        image_size: side of the square images in pixels (48-512).
        per_task: training records (and images) per training task.
        eval_per_task: records per held-out set (cifar10, cifar100, mnist, vsr, snli_ve, textvqa), per CV-Bench
            task and per POPE split (POPE uses eval_per_task // 6 images with 6 questions each).
        mme_images: images per MME subtask (two questions each).
        stage1_size: alignment records in stage1.json.
        seen_per_task: held-out instances per training task in eval/seen (``mixlora.data.seen``; Table 2's analogue).
        progress: show a tqdm bar.
    """
    _check_int("image_size", image_size, 48, 512, "64 matches the tiny model: patch 8 -> 64 image tokens")
    _check_int("per_task", per_task, 1, 100_000, "training records per task")
    _check_int("eval_per_task", eval_per_task, 6, 100_000, "POPE needs at least 6 questions per split")
    _check_int("mme_images", mme_images, 1, 10_000, "images per MME subtask")
    _check_int("stage1_size", stage1_size, 0, 1_000_000, "alignment records")
    _check_int("seen_per_task", seen_per_task, 1, 100_000, "held-out instances per training task")
    _check_int("seed", seed, 0, 2**63 - 1, "any non-negative integer")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; pass another --out.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite (deletes {', '.join(_OUTPUTS)} there) "
                                  "or choose an empty --out folder.")
        for name in _OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)

    pope_images = eval_per_task // 6
    total = (len(TRAIN_TASKS) * per_task + stage1_size + len(MME_SUBTASKS) * mme_images
             + len(CVBENCH_TASKS) * eval_per_task + len(SIMPLE_SETS) * eval_per_task + pope_images)
    with tqdm(total=total, desc="synthetic suite", unit="img", disable=not progress) as bar:
        _, train_info = write_training(out, seed, image_size, per_task, bar)
        stage1 = write_stage1(out, seed, image_size, stage1_size, bar)
        eval_info = {"mme": {"path": "eval/mme", "metric": EVAL_INFO["mme/existence"].metric,
                             "subtasks": write_mme(out, seed, image_size, mme_images, bar)},
                     "cvbench": {"path": "eval/cvbench/test.jsonl", "metric": EVAL_INFO["cvbench/Count"].metric,
                                 "tasks": write_cvbench(out, seed, image_size, eval_per_task, bar)}}
        for name in SIMPLE_SETS:
            eval_info[name] = write_simple_set(out, seed, image_size, name, eval_per_task, bar)
        eval_info["pope"] = write_pope(out, seed, image_size, pope_images, bar)
    from mixlora.data.seen import write_seen  # imports this module: a top-level import would be circular

    eval_info["seen"] = write_seen(out, seed, image_size, seen_per_task, progress=progress)
    definitions = write_task_definitions(out)
    manifest = {
        "generator": GENERATOR,
        "seed": seed,
        "image_size": image_size,
        "train": {"path": "train.json", "image_root": "images", "records": len(TRAIN_TASKS) * per_task,
                  "tasks": train_info},
        "stage1": {"path": "stage1.json", "image_root": "images", "records": len(stage1), "images": len(stage1)},
        "eval": eval_info,
        "task_definitions": definitions,
    }
    _write_json(out / "manifest.json", manifest)
    return manifest
