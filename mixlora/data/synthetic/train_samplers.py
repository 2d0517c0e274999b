"""Samplers of the Vision-Flan-style training tasks: ``_t_<task>(rng, image_size) -> Sample``, one per task of
:data:`~.train_tasks.TRAIN_TASKS`, plus the scene builders that the stage-1 captions and the MME sets reuse."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .phrases import _article, _options, _size_of, caption, option_answer
from .rendering import Scene, ShapeItem
from .scenes import (_apart, _colors_for, _pick_background, _radius, allowed_colors, multi_object, overlap_pair,
                     pair_relation, place, single_object, text_scene)
from .vocab import (BACKGROUND_PHRASES, BACKGROUNDS, CHARACTERS, COLOR_NAMES, NUMBER_WORDS, PLAIN_BACKGROUNDS,
                    PLURALS, POSITIONS, RELATION_PHRASES, RELATIONS, SCENES, SHAPES, SIZES, WORDS)


@dataclass
class Sample:
    """One instance of a task: the scene, the values for the phrasing's {fields}, the answer, and the inline options
    (or None)."""

    scene: Scene
    fields: dict
    answer: str
    options: list[str] | None = None


def _t_color_classification(rng, S):
    scene, obj = single_object(rng, S)
    opts, i = _options(rng, obj.color, COLOR_NAMES, 4)
    return Sample(scene, {}, option_answer(opts, i), opts)


def _t_color_name(rng, S):
    scene, obj = single_object(rng, S)
    return Sample(scene, {}, obj.color)


def _t_color_verification(rng, S):
    scene, obj = single_object(rng, S)
    yes = rng.random() < 0.5
    asked = obj.color if yes else rng.choice([c for c in COLOR_NAMES if c != obj.color])
    return Sample(scene, {"color": asked}, "Yes" if yes else "No")


def _t_shape_classification(rng, S):
    scene, obj = single_object(rng, S)
    opts, i = _options(rng, obj.kind, SHAPES, 4)
    return Sample(scene, {}, option_answer(opts, i), opts)


def _t_shape_verification(rng, S):
    scene, obj = single_object(rng, S)
    yes = rng.random() < 0.5
    asked = obj.kind if yes else rng.choice([s for s in SHAPES if s != obj.kind])
    return Sample(scene, {"shape": asked}, "yes" if yes else "no")


def _t_size_classification(rng, S):
    size_name = rng.choice(tuple(SIZES))
    scene, _ = single_object(rng, S, size_name=size_name)
    return Sample(scene, {}, size_name)


def _t_object_description(rng, S):
    scene, obj = single_object(rng, S)
    return Sample(scene, {}, _article(f"{_size_of(obj, S)} {obj.desc}"))


def _count_scene(rng, S):
    n = rng.randint(1, 6)
    bg = rng.choice(tuple(PLAIN_BACKGROUNDS))
    if rng.random() < 0.5:
        specs = [(rng.choice(SHAPES), rng.choice(allowed_colors(bg)))] * n
    else:
        specs = [(rng.choice(SHAPES), rng.choice(allowed_colors(bg))) for _ in range(n)]
    return multi_object(rng, S, specs, bg, size_names=("small", "medium") if n <= 3 else ("small",)), n


def _t_count_digits(rng, S):
    scene, n = _count_scene(rng, S)
    return Sample(scene, {}, str(n))


def _t_count_words(rng, S):
    scene, n = _count_scene(rng, S)
    return Sample(scene, {}, NUMBER_WORDS[n])


def _t_count_options(rng, S):
    scene, n = _count_scene(rng, S)
    opts, i = _options(rng, str(n), [str(k) for k in range(1, 8)], 4)
    return Sample(scene, {}, option_answer(opts, i), opts)


def _t_count_by_shape(rng, S):
    target = rng.choice(SHAPES)
    k = rng.choice((0, 1, 1, 2, 2, 3, 3, 4))
    bg = _pick_background(rng, 0.3)
    others = [s for s in SHAPES if s != target]
    specs = [(target, rng.choice(allowed_colors(bg))) for _ in range(k)]
    specs += [(rng.choice(others), rng.choice(allowed_colors(bg))) for _ in range(rng.randint(1, 3))]
    rng.shuffle(specs)
    return Sample(multi_object(rng, S, specs, bg), {"plural": PLURALS[target]}, str(k))


def _t_position_classification(rng, S):
    pos = rng.choice(POSITIONS)
    scene, _ = single_object(rng, S, position=pos, size_name=rng.choice(("small", "medium")))
    opts, i = _options(rng, pos, POSITIONS, 4)
    return Sample(scene, {}, option_answer(opts, i), opts)


def _t_position_name(rng, S):
    pos = rng.choice(POSITIONS)
    scene, _ = single_object(rng, S, position=pos, size_name=rng.choice(("small", "medium")))
    return Sample(scene, {}, pos)


def _t_relation_sentence(rng, S):
    rel = rng.choice(RELATIONS)
    scene, a, b = pair_relation(rng, S, rel, extra=rng.choice((0, 0, 1)))
    return Sample(scene, {"a": a.desc, "b": b.desc}, f"The {a.desc} is {RELATION_PHRASES[rel]} the {b.desc}.")


SIDE_PHRASES = {"left": "on the left", "right": "on the right", "above": "higher", "below": "lower"}


def _t_relation_which(rng, S):
    rel = rng.choice(RELATIONS)
    scene, a, b = pair_relation(rng, S, rel)
    x, y = (a, b) if rng.random() < 0.5 else (b, a)
    return Sample(scene, {"side": SIDE_PHRASES[rel], "x": x.desc, "y": y.desc}, f"the {a.desc}")


def _t_distance_judgement(rng, S):
    bg = _pick_background(rng, 0.3, n_colors=2)
    ca, cb = _colors_for(rng, bg, 2)
    ra, rb = _radius(rng, S, "small"), _radius(rng, S, "small")
    close = rng.random() < 0.5
    for _ in range(1000):
        (xa, ya), = place(rng, S, [ra])
        ang = rng.uniform(0, 2 * math.pi)
        d = rng.uniform(ra + rb + 4, ra + rb + 0.08 * S) if close else rng.uniform(0.62, 0.85) * S
        xb, yb = xa + d * math.cos(ang), ya + d * math.sin(ang)
        if rb + 2 <= xb <= S - rb - 2 and rb + 2 <= yb <= S - rb - 2 and _apart((xa, ya, ra), (xb, yb, rb), 3):
            break
    else:
        raise RuntimeError(f"could not place a distance pair in a {S}px image")
    items = (ShapeItem(rng.choice(SHAPES), ca, xa, ya, ra), ShapeItem(rng.choice(SHAPES), cb, xb, yb, rb))
    return Sample(Scene(S, bg, rng.getrandbits(32), items), {}, "close" if close else "far")


def _t_occlusion_front(rng, S):
    bg = _pick_background(rng, 0.3, n_colors=2)
    sizes = ("medium", "large")
    scene, front, back = overlap_pair(rng, S, bg, rng.choice(sizes), rng.choice(sizes))
    opts = [f"the {front.desc}", f"the {back.desc}"]
    if rng.random() < 0.5:
        opts.reverse()
    return Sample(scene, {}, option_answer(opts, opts.index(f"the {front.desc}")), opts)


def _t_size_comparison(rng, S):
    big, small = rng.choice((("large", "small"), ("large", "medium"), ("medium", "small")))
    bg = _pick_background(rng, 0.3, n_colors=2)
    ca, cb = _colors_for(rng, bg, 2)
    ra, rb = _radius(rng, S, big), _radius(rng, S, small)
    (xa, ya), (xb, yb) = place(rng, S, [ra, rb])
    a, b = ShapeItem(rng.choice(SHAPES), ca, xa, ya, ra), ShapeItem(rng.choice(SHAPES), cb, xb, yb, rb)
    x, y = (a, b) if rng.random() < 0.5 else (b, a)
    return Sample(Scene(S, bg, rng.getrandbits(32), (a, b)), {"x": x.desc, "y": y.desc}, f"the {a.desc}")


def _t_character_reading(rng, S):
    ch = rng.choice(CHARACTERS)
    scene, _ = text_scene(rng, S, ch, max_width=0.6, max_height=0.6)
    return Sample(scene, {}, ch)


def _t_word_transcription(rng, S):
    word = rng.choice(WORDS)
    scene, _ = text_scene(rng, S, word)
    return Sample(scene, {}, word)


def _t_text_color(rng, S):
    text = rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(CHARACTERS)
    scene, item = text_scene(rng, S, text, max_width=0.8, max_height=0.5)
    opts, i = _options(rng, item.color, COLOR_NAMES, 4)
    return Sample(scene, {}, option_answer(opts, i), opts)


def _expression(rng) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"{a}+{b}", a + b
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}", a - b


def _t_arithmetic(rng, S):
    expr, value = _expression(rng)
    scene, _ = text_scene(rng, S, expr, max_width=0.92, max_height=0.5)
    return Sample(scene, {}, str(value))


def _scene_with_objects(rng, S, bg):
    k = rng.randint(0, 2)
    specs = [(rng.choice(SHAPES), rng.choice(allowed_colors(bg))) for _ in range(k)]
    return multi_object(rng, S, specs, bg)


def _t_background_classification(rng, S):
    bg = rng.choice(SCENES)
    opts, i = _options(rng, bg, SCENES, 4)
    return Sample(_scene_with_objects(rng, S, bg), {}, option_answer(opts, i), opts)


def _t_scene_name(rng, S):
    bg = rng.choice(SCENES)
    return Sample(_scene_with_objects(rng, S, bg), {}, bg)


def _t_object_listing(rng, S):
    k = rng.randint(2, 4)
    bg = _pick_background(rng, 0.3)
    kinds = rng.sample(SHAPES, k)
    for _ in range(100):
        scene = multi_object(rng, S, [(s, rng.choice(allowed_colors(bg))) for s in kinds], bg)
        xs = sorted(s.cx for s in scene.shapes)
        if all(b - a >= 4 for a, b in zip(xs, xs[1:])):  # left-to-right order must be unambiguous
            break
    ordered = [s.kind for s in sorted(scene.shapes, key=lambda s: s.cx)]
    return Sample(scene, {}, ", ".join(ordered))


def _caption_scene(rng, S):
    bg = _pick_background(rng, 0.5)
    k = rng.randint(1, 3)
    specs = list(zip(rng.sample(SHAPES, k), _colors_for(rng, bg, k)))
    return multi_object(rng, S, specs, bg, size_names=tuple(SIZES) if k == 1 else ("small", "medium"))


def _t_image_captioning(rng, S):
    scene = _caption_scene(rng, S)
    return Sample(scene, {}, caption(scene))


def _corrupt(rng, scene: Scene) -> str:
    """A caption of ``scene`` made false by changing one shape's colour or kind, or the background."""
    shapes = list(scene.shapes)
    i = rng.randrange(len(shapes))
    s = shapes[i]
    mode = rng.choice(("color", "kind", "background"))
    if mode == "color":
        shapes[i] = ShapeItem(s.kind, rng.choice([c for c in COLOR_NAMES if c not in {x.color for x in shapes}]),
                              s.cx, s.cy, s.r)
    elif mode == "kind":
        shapes[i] = ShapeItem(rng.choice([k for k in SHAPES if k not in {x.kind for x in shapes}]), s.color,
                              s.cx, s.cy, s.r)
    else:
        other = rng.choice([b for b in BACKGROUNDS if b not in (scene.background, "room")
                            and BACKGROUND_PHRASES[b] != BACKGROUND_PHRASES[scene.background]])
        return caption(Scene(scene.size, other, 0, tuple(shapes)), with_sizes=False)
    return caption(Scene(scene.size, scene.background, 0, tuple(shapes)), with_sizes=False)


def _t_caption_matching(rng, S):
    scene = _caption_scene(rng, S)
    match = rng.random() < 0.5
    text = caption(scene, with_sizes=False) if match else _corrupt(rng, scene)
    return Sample(scene, {"caption": text}, "yes" if match else "no")


ANSWERABLE = ("What color is the {s}?", "Where is the {s}?", "How many shapes are there?", "Is the {s} big?",
              "What is the background?")
UNANSWERABLE = ("What is the {s} made of?", "Who drew the {s}?", "How heavy is the {s}?", "Why is the {s} there?",
                "What is the {s} used for?")


def _t_question_answerability(rng, S):
    scene, obj = single_object(rng, S)
    ok = rng.random() < 0.5
    question = rng.choice(ANSWERABLE if ok else UNANSWERABLE).format(s=obj.kind)
    return Sample(scene, {"question": question}, "Yes" if ok else "No")
