"""Stage-one alignment data: ``stage1.json``, LLaVA "plain" records whose answer is a short lower-case description
of a scene drawn from any of the scene builders."""

from __future__ import annotations

import random
from pathlib import Path

from .files import _rng, _save, _write_json
from .phrases import _article, _size_of, caption
from .rendering import Scene, render
from .scenes import pair_relation, single_object, text_scene
from .train_samplers import _caption_scene, _count_scene, _expression
from .vocab import BACKGROUND_PHRASES, CHARACTERS, NUMBER_WORDS, PLURALS, RELATION_PHRASES, RELATIONS, SCENES, WORDS


def _stage1_sample(rng: random.Random, S: int) -> tuple[Scene, str]:
    """A short lower-case description (BLIP-caption style) of a scene drawn from any of the generators."""
    kind = rng.choices(("single", "multi", "pair", "text", "scene", "count"), weights=(4, 2, 2, 2, 1, 1))[0]
    if kind == "single":
        scene, obj = single_object(rng, S)
        return scene, f"{_article(_size_of(obj, S) + ' ' + obj.desc)} on {BACKGROUND_PHRASES[scene.background]}"
    if kind == "multi":
        scene = _caption_scene(rng, S)
        return scene, caption(scene, with_sizes=False)[:-1].lower()
    if kind == "pair":
        rel = rng.choice(RELATIONS)
        scene, a, b = pair_relation(rng, S, rel)
        return scene, f"a {a.desc} {RELATION_PHRASES[rel]} a {b.desc}"
    if kind == "text":
        text = rng.choice(WORDS + CHARACTERS) if rng.random() < 0.7 else _expression(rng)[0]
        scene, item = text_scene(rng, S, text)
        return scene, f"the text {text} written in {item.color} on {BACKGROUND_PHRASES[scene.background]}"
    if kind == "scene":
        bg = rng.choice(SCENES)
        return Scene(S, bg, rng.getrandbits(32)), f"a picture of {BACKGROUND_PHRASES[bg]}"
    scene, n = _count_scene(rng, S)
    kinds = sorted({s.kind for s in scene.shapes})
    what = PLURALS[kinds[0]] if len(kinds) == 1 and n > 1 else (kinds[0] if n == 1 else "shapes")
    return scene, f"{NUMBER_WORDS[n]} {what} on {BACKGROUND_PHRASES[scene.background]}"


def write_stage1(out: Path, seed: int, size: int, n: int, bar) -> list[dict]:
    """Write ``stage1.json`` (LLaVA plain-template alignment records) and its images."""
    rng = _rng(seed, "stage1")
    records = []
    for i in range(n):
        scene, text = _stage1_sample(rng, size)
        image = f"stage1_align/{i:06d}.png"
        _save(render(scene), out / "images" / image)
        records.append({"id": f"{i:09d}", "image": image,
                        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": text}]})
        bar.update(1)
    _write_json(out / "stage1.json", records)
    return records
