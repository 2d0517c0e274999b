"""POPE-format held-out set: "Is there a X in the image?" over multi-object scenes, three splits (random, popular,
adversarial negatives) over the same images."""

from __future__ import annotations

import random
from pathlib import Path

from .files import _rng, _save, _write_jsonl
from .heldout_info import EVAL_INFO
from .rendering import render
from .scenes import _colors_for, _pick_background, multi_object
from .vocab import SHAPES


# POPE: shapes co-occur in themes with skewed frequencies, so that "popular" (globally frequent) and "adversarial"
# (frequently co-occurring) negatives differ from uniformly random ones, as with COCO objects.
POPE_THEMES = (
    (0.45, {"circle": 5, "ring": 3, "pentagon": 2, "hexagon": 2}),
    (0.35, {"square": 5, "diamond": 3, "cross": 2, "arrow": 1}),
    (0.20, {"triangle": 5, "star": 3, "arrow": 2, "diamond": 1}),
)
POPE_SPLITS = ("random", "popular", "adversarial")


def _pope_objects(rng) -> list[str]:
    members = rng.choices(POPE_THEMES, weights=[w for w, _ in POPE_THEMES])[0][1]
    kinds: list[str] = []
    while len(kinds) < 3:
        k = rng.choices(list(members), weights=list(members.values()))[0]
        if k not in kinds:
            kinds.append(k)
    if rng.random() < 0.3:
        kinds.append(rng.choice([s for s in SHAPES if s not in kinds]))
    return kinds


def pope_negatives(present: list[str], frequency: dict[str, int], cooccur: dict[tuple[str, str], int],
                   rng: random.Random, k: int = 3) -> dict[str, list[str]]:
    """POPE's three negative samplers for one image: ``random`` (uniform over absent objects), ``popular`` (the k
    most frequent absent objects in the whole set), ``adversarial`` (the k absent objects that co-occur most with the
    present ones). Ties break in :data:`SHAPES` order."""
    absent = [s for s in SHAPES if s not in present]
    popular = sorted(absent, key=lambda s: (-frequency[s], SHAPES.index(s)))[:k]
    adversarial = sorted(absent, key=lambda s: (-sum(cooccur[(p, s)] for p in present), SHAPES.index(s)))[:k]
    return {"random": rng.sample(absent, k), "popular": popular, "adversarial": adversarial}


def write_pope(out: Path, seed: int, size: int, n_images: int, bar) -> dict:
    """Write POPE's three splits over the same images: per image 3 'yes' questions (present objects) and 3 'no'
    questions (negatives from the split's sampler), alternating yes/no."""
    rng = _rng(seed, "pope")
    root = out / "eval" / "pope"
    truths = []
    for i in range(n_images):
        kinds = _pope_objects(rng)
        bg = _pick_background(rng, 0.4, n_colors=len(kinds))
        scene = multi_object(rng, size, list(zip(kinds, _colors_for(rng, bg, len(kinds), distinct=False))), bg)
        _save(render(scene), root / "images" / f"{i:05d}.png")
        truths.append(kinds)
        bar.update(1)
    frequency = {s: sum(s in t for t in truths) for s in SHAPES}
    cooccur = {(a, b): sum(a in t and b in t for t in truths) for a in SHAPES for b in SHAPES}
    splits: dict[str, list[dict]] = {s: [] for s in POPE_SPLITS}
    for i, kinds in enumerate(truths):
        yes = rng.sample(kinds, 3)
        negatives = pope_negatives(kinds, frequency, cooccur, rng)
        for split in POPE_SPLITS:
            for j, (obj_yes, obj_no) in enumerate(zip(yes, negatives[split])):
                for k, (obj, target) in enumerate(((obj_yes, "yes"), (obj_no, "no"))):
                    splits[split].append({"unique_id": f"pope_{split}-{i:05d}-{2 * j + k}",
                                          "prompt": f"Is there a {obj} in the image?", "target": target,
                                          "image_path": f"images/{i:05d}.png"})
    for split, rows in splits.items():
        _write_jsonl(root / f"{split}.jsonl", rows)
    e = EVAL_INFO["pope"]
    return {"paths": {s: f"eval/pope/{s}.jsonl" for s in POPE_SPLITS}, "images": n_images,
            "records": {s: len(r) for s, r in splits.items()}, "closest_training_tasks": list(e.closest),
            "zero_shot_reason": e.reason, "metric": e.metric, "label_set": list(SHAPES)}
