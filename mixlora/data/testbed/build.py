"""``make_testbed``: build the whole testbed into one folder.

Output layout (``OUT`` = ``out_dir``; image paths in the JSON files are relative as noted)::

    OUT/images/train/<n>.png     training pool, shared by every task and by stage 1
    OUT/images/test/<n>.png      test pool (no image equal to a training one), shared by both test splits
    OUT/stage1.json              caption records (Vision-Flan format; "image" relative to OUT/images)
    OUT/train.json               train_per_task records per task (Vision-Flan format; "image" relative to OUT/images)
    OUT/eval/seen/test.jsonl     test_per_task rows per task, training phrasings ("image_path" relative to the
    OUT/eval/unseen/test.jsonl   jsonl's folder); the same instances phrased with the unseen phrasings
    OUT/manifest.json            arguments, counts, tasks, answer distributions, version; written last

A build is complete exactly when ``manifest.json`` exists.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tqdm import tqdm

from mixlora.data.testbed import splits, writer
from mixlora.data.testbed.families import select_tasks
from mixlora.data.testbed.render import render
from mixlora.data.testbed.vocab import VERSION, check_image_size

DEFAULTS: dict[str, int] = {"image_size": 64, "train_images": 3000, "test_images": 1200, "train_per_task": 600,
                            "test_per_task": 300, "stage1_size": 4000}
COUNTS: tuple[str, ...] = ("train_images", "test_images", "train_per_task", "test_per_task", "stage1_size")


def check_arguments(seed, image_size, tasks=None, **counts) -> dict:
    """The build's identity ``{"version", "seed", "image_size", "sizes", "tasks"}``; ValueError naming a bad
    argument."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    check_image_size(image_size)
    for name in COUNTS:
        value = counts[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return {"version": VERSION, "seed": seed, "image_size": image_size,
            "sizes": {name: counts[name] for name in COUNTS}, "tasks": [t.name for t in select_tasks(tasks)]}


def make_testbed(out_dir, seed: int = 0, image_size: int = 64, train_images: int = 3000, test_images: int = 1200,
                 train_per_task: int = 600, test_per_task: int = 300, stage1_size: int = 4000,
                 tasks=None, overwrite: bool = False, progress: bool = True) -> dict:
    """Build the testbed into ``out_dir`` and return its manifest.

    ``tasks``: task names such as ``"colour_next"`` (None: :data:`~mixlora.data.testbed.families.DEFAULT_TASKS`).
    If ``out_dir`` already holds a complete build with the same arguments, its manifest is returned and nothing
    is written. A build with other arguments, or an incomplete one (generator outputs but no manifest), raises
    FileExistsError unless ``overwrite``; ``overwrite`` deletes only the generator's own outputs (images/,
    eval/, stage1.json, train.json, manifest.json) and rebuilds. Other files in the folder are never touched.
    """
    identity = check_arguments(seed, image_size, tasks, train_images=train_images, test_images=test_images,
                               train_per_task=train_per_task, test_per_task=test_per_task, stage1_size=stage1_size)
    out = Path(out_dir)
    existing = _prepare(out, identity, overwrite)
    if existing is not None:
        return existing

    train_pool, test_pool = splits.draw_pools(seed, image_size, train_images, test_images)
    with tqdm(total=train_images + test_images, desc="testbed images", unit="img", disable=not progress) as bar:
        for folder, pool in (("train", train_pool), ("test", test_pool)):
            for n, scene in enumerate(pool):
                writer.save_png(render(scene, image_size), out / "images" / folder / splits.image_name(n))
                bar.update(1)

    stage1 = splits.stage1_records(seed, train_pool, stage1_size, "train")
    chosen = select_tasks(identity["tasks"])
    train = splits.train_records(seed, train_pool, train_per_task, "train", chosen)
    # The jsonl files sit two folders below OUT: eval/<split>/test.jsonl.
    seen, unseen = splits.test_records(seed, test_pool, test_per_task, "../../images/test", chosen)
    writer.write_json(out / "stage1.json", stage1)
    writer.write_json(out / "train.json", train)
    writer.write_jsonl(out / "eval" / "seen" / "test.jsonl", seen)
    writer.write_jsonl(out / "eval" / "unseen" / "test.jsonl", unseen)

    manifest = _manifest(identity, stage1, train, seen, unseen)
    writer.write_json(out / writer.MANIFEST, manifest)  # last: marks the build complete
    return manifest


def _prepare(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """Apply the folder policy; returns the existing manifest when the build is already there."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder; choose another output folder")
    manifest = writer.read_manifest(out)
    if manifest is not None and not overwrite:
        if manifest.get("arguments") == identity:
            return manifest
        raise FileExistsError(f"{out} already holds a testbed built with other arguments "
                              f"({manifest.get('arguments')} != {identity}); pass --overwrite (overwrite=True) "
                              "to replace it, or choose another folder")
    if manifest is None and writer.existing_outputs(out) and not overwrite:
        raise FileExistsError(f"{out} holds an incomplete testbed (generator outputs but no manifest.json, e.g. an "
                              "interrupted build); pass --overwrite (overwrite=True) to rebuild it")
    if overwrite:
        writer.remove_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _distribution(answers) -> dict[str, int]:
    counts = Counter(answers)
    return {answer: counts[answer] for answer in sorted(counts)}


def _manifest(identity: dict, stage1: list, train: list, seen: list, unseen: list) -> dict:
    tasks = []
    for task in select_tasks(identity["tasks"]):
        train_answers = [r["conversations"][1]["value"] for r in train if r["task_name"] == task.task_name]
        test_answers = [r["target"] for r in seen if r["task_name"] == task.task_name]
        tasks.append({"task_name": task.task_name, "family": task.family, "kind": task.kind,
                      "train_templates": len(task.train_templates), "unseen_templates": len(task.unseen_templates),
                      "answers": {"train": _distribution(train_answers), "test": _distribution(test_answers)}})
    return {
        "generator": "mixlora.data.testbed",
        "version": identity["version"],
        "seed": identity["seed"],
        "image_size": identity["image_size"],
        "sizes": identity["sizes"],
        "arguments": identity,  # what an identical rebuild must match
        "records": {"stage1": len(stage1), "train": len(train), "seen": len(seen), "unseen": len(unseen)},
        "files": {"train_images": "images/train", "test_images": "images/test", "stage1": "stage1.json",
                  "train": "train.json", "seen": "eval/seen/test.jsonl", "unseen": "eval/unseen/test.jsonl"},
        "tasks": tasks,
    }
