"""MME-format held-out set: seven yes/no subtasks, each image with a true ("Yes") and a false ("No") question,
written in the release's flat layout (``stem.png`` + ``stem.txt``) or, for scene, its nested one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .files import _rng, _save
from .heldout_info import EVAL_INFO
from .phrases import _similar_word
from .rendering import render
from .scenes import _colors_for, _pick_background, allowed_colors, multi_object, pair_relation, sign_scene, text_scene
from .train_samplers import _expression, _scene_with_objects
from .vocab import (COLOR_NAMES, MME_SUFFIX, NUMBER_WORDS, OPPOSITE, PLAIN_BACKGROUNDS, PLURALS, RELATIONS, SCENES,
                    SHAPES, WORDS)


def _mme_existence(rng, S):
    bg = _pick_background(rng, 0.4, n_colors=3)
    k = rng.randint(2, 3)
    specs = list(zip(rng.sample(SHAPES, k), _colors_for(rng, bg, k)))
    scene = multi_object(rng, S, specs, bg)
    kind, color = rng.choice(specs)
    present = set(specs)
    absent = [(s, c) for s in SHAPES for c in COLOR_NAMES if (s, c) not in present]
    # Hard negatives: a present shape in another colour, or a present colour on another shape.
    hard = [(s, c) for s, c in absent if s in {p[0] for p in specs} or c in {p[1] for p in specs}]
    nkind, ncolor = rng.choice(hard)
    q = "Is there a {} {} in this image?"
    return scene, q.format(color, kind), q.format(ncolor, nkind)


def _mme_count(rng, S):
    n = rng.randint(1, 5)
    bg = rng.choice(tuple(PLAIN_BACKGROUNDS))
    kind = rng.choice(SHAPES)
    specs = [(kind, rng.choice(allowed_colors(bg))) for _ in range(n)]
    if rng.random() < 0.5:
        specs += [(rng.choice([s for s in SHAPES if s != kind]), rng.choice(allowed_colors(bg)))]
    rng.shuffle(specs)
    scene = multi_object(rng, S, specs, bg)
    wrong = rng.choice([m for m in range(1, 7) if m != n and abs(m - n) <= 2])

    def q(m):
        return (f"Is there only one {kind} in this image?" if m == 1 else
                f"Are there {NUMBER_WORDS[m]} {PLURALS[kind]} in this image?")
    return scene, q(n), q(wrong)


MME_POSITION_PHRASES = {"left": "on the left of", "right": "on the right of", "above": "above", "below": "below"}


def _mme_position(rng, S):
    rel = rng.choice(RELATIONS)
    scene, a, b = pair_relation(rng, S, rel, bg=rng.choice(tuple(PLAIN_BACKGROUNDS)))
    q = "Is the {} {} the {}?"
    return scene, q.format(a.desc, MME_POSITION_PHRASES[rel], b.desc), \
        q.format(a.desc, MME_POSITION_PHRASES[OPPOSITE[rel]], b.desc)


def _mme_color(rng, S):
    bg = rng.choice(tuple(PLAIN_BACKGROUNDS))
    k = rng.randint(2, 3)
    specs = list(zip(rng.sample(SHAPES, k), _colors_for(rng, bg, k)))
    scene = multi_object(rng, S, specs, bg)
    kind, color = rng.choice(specs)
    wrong = rng.choice([c for c in COLOR_NAMES if c not in {p[1] for p in specs}])
    q = "Is the {} in this image {}?"
    return scene, q.format(kind, color), q.format(kind, wrong)


def _mme_ocr(rng, S):
    word = rng.choice(WORDS)
    scene, _ = sign_scene(rng, S, [word])
    q = 'Is the word in the logo "{}"?'
    return scene, q.format(word), q.format(_similar_word(rng, word))


def _mme_numerical(rng, S):
    expr, value = _expression(rng)
    scene, _ = text_scene(rng, S, expr + "=?", max_width=0.95, max_height=0.5)
    wrong = rng.choice([v for v in range(max(0, value - 3), value + 4) if v != value])
    q = "Is the answer to the arithmetic question in the image {}?"
    return scene, q.format(value), q.format(wrong)


def _mme_scene(rng, S):
    bg = rng.choice(SCENES)
    scene = _scene_with_objects(rng, S, bg)
    q = "Does this image show a {} scene?"
    return scene, q.format(bg), q.format(rng.choice([s for s in SCENES if s != bg]))


# name -> (generator, layout); "nested" = the release's images/ + questions_answers_YN/ layout (used for scene).
MME_SUBTASKS: dict[str, tuple[Callable, str]] = {
    "existence": (_mme_existence, "flat"),
    "count": (_mme_count, "flat"),
    "position": (_mme_position, "flat"),
    "color": (_mme_color, "flat"),
    "OCR": (_mme_ocr, "flat"),
    "numerical_calculation": (_mme_numerical, "flat"),
    "scene": (_mme_scene, "nested"),
}


def write_mme(out: Path, seed: int, size: int, n_images: int, bar) -> dict:
    """Write the MME subtasks: per image two questions (Yes first, then No), each ending in MME_SUFFIX."""
    info = {}
    for name, (make, layout) in MME_SUBTASKS.items():
        rng = _rng(seed, f"mme/{name}")
        root = out / "eval" / "mme" / name
        for i in range(n_images):
            scene, q_yes, q_no = make(rng, size)
            stem = f"synth_{i:04d}"
            img_path = root / f"{stem}.png" if layout == "flat" else root / "images" / f"{stem}.png"
            txt_path = root / f"{stem}.txt" if layout == "flat" else root / "questions_answers_YN" / f"{stem}.txt"
            _save(render(scene), img_path)
            txt_path.parent.mkdir(parents=True, exist_ok=True)
            txt_path.write_text(f"{q_yes}{MME_SUFFIX}\tYes\n{q_no}{MME_SUFFIX}\tNo\n", encoding="utf-8")
            bar.update(1)
        e = EVAL_INFO[f"mme/{name}"]
        info[name] = {"layout": layout, "images": n_images, "questions": 2 * n_images,
                      "closest_training_tasks": list(e.closest), "zero_shot_reason": e.reason}
    return info
