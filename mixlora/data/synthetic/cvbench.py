"""CV-Bench-format held-out set: Count and Relation (2D), Depth and Distance (3D), as lettered multiple choice
in CV-Bench's record format (``eval/cvbench/test.jsonl``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .files import _rng, _save, _write_jsonl
from .heldout_info import EVAL_INFO
from .phrases import _options
from .rendering import Scene, ShapeItem, render
from .scenes import _colors_for, _radius, allowed_colors, multi_object, overlap_pair, pair_relation, place
from .vocab import CVBENCH_SUFFIX, PLAIN_BACKGROUNDS, PLURALS, RELATIONS, SHAPES


def _cv_count(rng, S):
    target = rng.choice(SHAPES)
    k = rng.randint(1, 5)
    bg = rng.choice(tuple(PLAIN_BACKGROUNDS))
    specs = [(target, rng.choice(allowed_colors(bg))) for _ in range(k)]
    specs += [(rng.choice([s for s in SHAPES if s != target]), rng.choice(allowed_colors(bg)))
              for _ in range(rng.randint(1, 3))]
    rng.shuffle(specs)
    scene = multi_object(rng, S, specs, bg, size_names=("small",))
    choices, i = _options(rng, str(k), [str(n) for n in range(0, 7)], 4)
    return scene, f"How many {PLURALS[target]} are in the image?", choices, i, {"target_class": target}


def _cv_relation(rng, S):
    rel = rng.choice(RELATIONS)
    scene, a, b = pair_relation(rng, S, rel, bg=rng.choice(tuple(PLAIN_BACKGROUNDS)), extra=rng.choice((0, 1)))
    choices = ["left", "right"] if rel in ("left", "right") else ["above", "below"]
    if rng.random() < 0.5:
        choices.reverse()
    question = (f"Considering the relative positions of the {a.desc} and the {b.desc} in the image provided, "
                f"where is the {a.desc} located with respect to the {b.desc}?")
    return scene, question, choices, choices.index(rel), {"target_class": a.kind}


def _cv_depth(rng, S):
    scene, front, back = overlap_pair(rng, S, "room", "large", rng.choice(("small", "medium")), front_lower=True)
    x, y = (front, back) if rng.random() < 0.5 else (back, front)
    choices = [x.desc, y.desc]
    question = f"Which object is closer to the camera taking this photo, the {x.desc} or the {y.desc}?"
    return scene, question, choices, choices.index(front.desc), {"bbox": [_bbox(x), _bbox(y)]}


def _cv_distance(rng, S):
    ref_c, ca, cb = _colors_for(rng, "room", 3)
    r = [_radius(rng, S, "small") for _ in range(3)]
    for _ in range(1000):
        pts = place(rng, S, r)
        da, db = math.dist(pts[0], pts[1]), math.dist(pts[0], pts[2])
        if max(da, db) >= 1.6 * min(da, db):
            break
    else:
        raise RuntimeError(f"could not place a distance triple in a {S}px image")
    kinds = rng.sample(SHAPES, 3)
    ref, a, b = (ShapeItem(k, c, x, y, rr) for k, c, (x, y), rr in zip(kinds, (ref_c, ca, cb), pts, r))
    scene = Scene(S, "room", rng.getrandbits(32), (ref, a, b))
    near = a if da < db else b
    choices = [a.desc, b.desc]
    question = (f"Estimate the real-world distances between objects in this image. Which object is closer to the "
                f"{ref.desc}, the {a.desc} or the {b.desc}?")
    return scene, question, choices, choices.index(near.desc), {"bbox": [_bbox(ref), _bbox(a), _bbox(b)]}


def _bbox(item: ShapeItem) -> list[int]:
    return [round(item.cx - item.r), round(item.cy - item.r), round(item.cx + item.r), round(item.cy + item.r)]


# CV-Bench task -> (type, generator, image folder, sources cycled over items)
CVBENCH_TASKS: dict[str, tuple[str, Callable, str, tuple[str, ...]]] = {
    "Count": ("2D", _cv_count, "img/2D/count", ("ADE20K", "COCO")),
    "Relation": ("2D", _cv_relation, "img/2D/relation", ("ADE20K", "COCO")),
    "Depth": ("3D", _cv_depth, "img/3D/depth", ("Omni3D",)),
    "Distance": ("3D", _cv_distance, "img/3D/distance", ("Omni3D",)),
}


def cvbench_prompt(question: str, choices: list[str]) -> str:
    """CV-Bench's pre-formatted prompt: question, ' Select from the following choices.', then '\\n(A) x' lines."""
    return question + CVBENCH_SUFFIX + "".join(f"\n({chr(65 + i)}) {c}" for i, c in enumerate(choices))


def write_cvbench(out: Path, seed: int, size: int, per_task: int, bar) -> dict:
    """Write ``eval/cvbench/test.jsonl`` and images in CV-Bench's record format."""
    root = out / "eval" / "cvbench"
    rows, info = [], {}
    for task, (kind, make, folder, sources) in CVBENCH_TASKS.items():
        rng = _rng(seed, f"cvbench/{task}")
        for i in range(per_task):
            source = sources[i % len(sources)]
            scene, question, choices, answer, extra = make(rng, size)
            filename = f"{folder}/{source.lower()}_{i}.png"
            _save(render(scene), root / filename)
            rows.append({
                "idx": len(rows), "type": kind, "task": task, "image": filename, "question": question,
                "choices": choices, "answer": f"({chr(65 + answer)})", "prompt": cvbench_prompt(question, choices),
                "filename": filename, "source": source, "source_dataset": f"synthetic ({source}-style)",
                "source_filename": Path(filename).name,
                "target_class": extra.get("target_class") if source == "COCO" else None,
                "target_size": sum(round(4 * s.r * s.r) for s in scene.shapes) if source == "COCO" else None,
                "bbox": extra.get("bbox") if source == "Omni3D" else None,
            })
            bar.update(1)
        e = EVAL_INFO[f"cvbench/{task}"]
        info[task] = {"type": kind, "records": per_task, "images": per_task, "sources": list(sources),
                      "closest_training_tasks": list(e.closest), "zero_shot_reason": e.reason}
    _write_jsonl(root / "test.jsonl", rows)
    return info
