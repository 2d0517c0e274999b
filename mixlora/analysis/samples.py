"""What the analyses look at: per-task seeded samples of a Vision-Flan-style training JSON, and the held-out sets
of the synthetic suite (read through its manifest), generating the suite first when it is missing."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Optional, Sequence

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- training records
def load_records(path: str | Path) -> list[dict]:
    """The JSON list of a Vision-Flan/LLaVA annotation file, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist (generate the synthetic suite with "
                                "`python data/make_synthetic.py --out data/synthetic --seed 0`, or fix --data)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected a JSON list of Vision-Flan records") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: holds a {type(records).__name__}; expected a JSON list of Vision-Flan records")
    return records


def records_by_task(records: Sequence[dict], source: str = "annotations") -> dict[str, list[int]]:
    """{task_name: [positions in ``records``]} in file order; a record without ``task_name`` is an error."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        task = record.get("task_name") if isinstance(record, dict) else None
        if not isinstance(task, str) or not task:
            raise ValueError(f"{source}: record {i} has no 'task_name'; the analyses group records by task, so "
                             "every record needs one (Vision-Flan format, docs/data.md)")
        groups.setdefault(task, []).append(i)
    return groups


def sample_per_task(records: Sequence[dict], tasks: Sequence[str], n: int, seed: int = 0,
                    source: str = "annotations") -> dict[str, list[int]]:
    """Seeded sample of ``n`` record positions per task: {task: sorted positions}.

    Each task draws from its own ``random.Random(f"{seed}/{task}")``, so adding a task does not change the
    others' samples. A task with fewer than ``n`` records contributes all of them (logged).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (samples per task) must be a positive integer, got {n!r}")
    if not tasks:
        raise ValueError("no tasks given; pass task names, e.g. --tasks SynthShapes+color_name,SynthCount+count_digits")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks are listed twice: {sorted(t for t in set(tasks) if list(tasks).count(t) > 1)}")
    groups = records_by_task(records, source)
    unknown = [t for t in tasks if t not in groups]
    if unknown:
        available = sorted(groups)
        raise ValueError(f"{source}: task(s) {unknown} not found; available ({len(available)}): "
                         f"{available[:12]}{' ...' if len(available) > 12 else ''}")
    picked = {}
    for task in tasks:
        pool = groups[task]
        if len(pool) < n:
            logger.warning("%s: task %r has only %d records (< n=%d); using all of them", source, task, len(pool), n)
            picked[task] = list(pool)
        else:
            picked[task] = sorted(random.Random(f"{seed}/{task}").sample(pool, n))
    return picked


def default_image_folder(data: str | Path) -> Path:
    """Where a training JSON's ``image`` paths are relative to: the synthetic suite's ``train.image_root`` when
    a ``manifest.json`` lies beside the file, else the file's folder (the ConversationDataset default)."""
    data = Path(data)
    manifest = data.parent / "manifest.json"
    if manifest.is_file():
        root = json.loads(manifest.read_text()).get("train", {}).get("image_root")
        if root:
            return data.parent / root
    return data.parent


def ensure_synthetic_suite(data: str | Path, seed: int = 0) -> Path:
    """Return ``data``; if it is a missing ``DIR/train.json``, generate the synthetic suite in DIR first
    (``mixlora.data.synthetic.ensure_suite``: only into an empty or absent DIR, atomically; ~4 s)."""
    data = Path(data)
    if data.is_file():
        return data
    if data.name != "train.json":
        raise FileNotFoundError(f"{data} does not exist; pass an existing Vision-Flan JSON with --data (the "
                                "synthetic suite is generated automatically only for DIR/train.json in an empty or "
                                "absent DIR)")
    from mixlora.data.synthetic import IncompleteSuiteError, ensure_suite

    folder = data.parent
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):  # where ensure_suite generates
        logger.warning("%s is missing: generating the synthetic suite in %s (seed %d)", data, folder, seed)
    try:
        ensure_suite(folder, seed=seed)
    except IncompleteSuiteError as err:
        raise FileNotFoundError(f"{data} does not exist; pass an existing Vision-Flan JSON with --data ({err})") \
            from err
    if not data.is_file():
        raise FileNotFoundError(f"{data} does not exist, although {folder} holds a finished synthetic suite; "
                                "rebuild it with data/make_synthetic.py --overwrite, or pass another --data")
    return data


# ---------------------------------------------------------------------------------------------- held-out sets
def load_manifest(suite_dir: str | Path) -> dict:
    path = Path(suite_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: held-out sets and their closest training tasks come from "
                                "the synthetic suite's manifest (data/make_synthetic.py writes it)")
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not a JSON object ({err})") from err
    return rows


def _mme_prompts(folder: Path) -> list[dict]:
    """MME subtask folder (flat ``stem.png + stem.txt`` or ``images/`` + ``questions_answers_YN/``): one prompt per
    question line ``question<TAB>Yes|No``."""
    nested = (folder / "questions_answers_YN").is_dir()
    txt_dir, img_dir = (folder / "questions_answers_YN", folder / "images") if nested else (folder, folder)
    prompts = []
    for txt in sorted(txt_dir.glob("*.txt")):
        images = [p for p in (img_dir / (txt.stem + ext) for ext in (".png", ".jpg", ".jpeg")) if p.is_file()]
        if not images:
            raise FileNotFoundError(f"{txt}: no image {txt.stem}.png/.jpg beside it in {img_dir}")
        for k, line in enumerate(txt.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                question = line.split("\t")[0].strip()
                prompts.append({"unique_id": f"{txt.stem}-{k}", "prompt": question, "image_path": str(images[0])})
    return prompts


def heldout_prompts(suite_dir: str | Path, name: str, manifest: Optional[dict] = None) -> tuple[list[dict], list[str]]:
    """Prompts of one held-out set of the synthetic suite and its closest training tasks (from the manifest).

    ``name``: ``cifar10 | cifar100 | mnist | vsr | snli_ve | textvqa`` (MixLoRA eval JSONL), ``pope`` (the random
    split) or ``pope/<split>``, ``cvbench/<Count|Relation|Depth|Distance>``, ``mme/<subtask>``.
    Returns ``([{"unique_id", "prompt", "image_path" (absolute)}], closest_training_tasks)``.
    """
    suite = Path(suite_dir)
    manifest = manifest if manifest is not None else load_manifest(suite)
    evals = manifest.get("eval", {})
    head, _, tail = name.partition("/")
    try:
        if head == "mme":
            info = evals["mme"]["subtasks"][tail]
            return _mme_prompts(suite / evals["mme"]["path"] / tail), list(info["closest_training_tasks"])
        if head == "cvbench":
            info = evals["cvbench"]["tasks"][tail]
            path = suite / evals["cvbench"]["path"]
            rows = [r for r in _read_jsonl(path) if r.get("task") == tail]
            prompts = [{"unique_id": str(r["idx"]), "prompt": r["prompt"], "image_path": str(path.parent / r["image"])}
                       for r in rows]
            return prompts, list(info["closest_training_tasks"])
        if head == "pope":
            info = evals["pope"]
            path = suite / info["paths"][tail or "random"]
        else:
            if tail:
                raise KeyError(name)
            info = evals[head]
            path = suite / info["path"]
    except KeyError:
        raise ValueError(f"held-out set {name!r} is not in {suite / 'manifest.json'}; use one of "
                         f"{heldout_names(manifest)}") from None
    prompts = [{"unique_id": r["unique_id"], "prompt": r["prompt"], "image_path": str(path.parent / r["image_path"])}
               for r in _read_jsonl(path)]
    return prompts, list(info["closest_training_tasks"])


def heldout_names(manifest: dict) -> list[str]:
    """Every held-out set name that :func:`heldout_prompts` accepts for this manifest."""
    names = []
    for key, info in manifest.get("eval", {}).items():
        if key == "mme":
            names += [f"mme/{s}" for s in info.get("subtasks", {})]
        elif key == "cvbench":
            names += [f"cvbench/{t}" for t in info.get("tasks", {})]
        elif key == "pope":
            names += ["pope"] + [f"pope/{s}" for s in info.get("paths", {})]
        else:
            names.append(key)
    return names


def short_task(name: str) -> str:
    """Label for plots: the part after the dataset prefix (``SynthShapes+color_name`` -> ``color_name``)."""
    return name.split("+", 1)[1] if "+" in name else name
