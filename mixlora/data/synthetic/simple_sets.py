"""The held-out sets in MixLoRA's eval JSONL format (``eval/<set>/test.jsonl``: unique_id, prompt, target,
image_path): cifar10, cifar100, mnist, vsr, snli_ve and textvqa."""

from __future__ import annotations

import random
from pathlib import Path

from .files import _rng, _save, _write_jsonl
from .heldout_info import EVAL_INFO
from .phrases import _article, _similar_word, lettered
from .rendering import render
from .scenes import _colors_for, _pick_background, handwritten_digit, multi_object, pair_relation, sign_scene, \
    single_object
from .vocab import COLOR_NAMES, NUMBER_WORDS, OPPOSITE, RELATIONS, SHAPES, WORDS

SIMPLE_SETS = ("cifar10", "cifar100", "mnist", "vsr", "snli_ve", "textvqa")


CIFAR100_LABELS = tuple(f"{c} {s}" for c in COLOR_NAMES for s in SHAPES)


def _e_cifar10(rng, S):
    scene, obj = single_object(rng, S, p_scene=0.5)
    return scene, "What is the object in the image?\nOptions: " + lettered(list(SHAPES)), obj.kind, list(SHAPES)


def _e_cifar100(rng, S):
    color, kind = rng.choice(CIFAR100_LABELS).split()
    scene, _ = single_object(rng, S, shape=kind, color=color, p_scene=0.5)
    return scene, "What is the object in the image? Answer with its color and shape.", f"{color} {kind}", None


def _e_mnist(rng, S):
    digit = rng.choice("0123456789")
    return handwritten_digit(rng, S, digit), "What digit is drawn in this image?", digit, None


VSR_PHRASES = {"left": "is left of", "right": "is right of", "above": "is above", "below": "is below"}


def _e_vsr(rng, S, label: bool):
    rel = rng.choice(RELATIONS)
    scene, a, b = pair_relation(rng, S, rel)
    stated = rel if label else OPPOSITE[rel]
    statement = f"The {a.desc} {VSR_PHRASES[stated]} the {b.desc}."
    opts = ["True", "False"]
    prompt = f"Is the following statement about the image true or false? {statement}\nOptions: {lettered(opts)}"
    return scene, prompt, "True" if label else "False", opts


NEUTRAL_TEMPLATES = ("The {s} is made of wood.", "The {s} was drawn by a child.", "The {d} is very heavy.",
                     "The {s} is moving fast.", "Someone painted the {d} yesterday.", "The {s} belongs to a teacher.")
SNLI_LABELS = ("entailment", "neutral", "contradiction")


def _e_snli_ve(rng, S, label: str):
    bg = _pick_background(rng, 0.4, n_colors=3)
    k = rng.randint(1, 3)
    specs = list(zip(rng.sample(SHAPES, k), _colors_for(rng, bg, k)))
    scene = multi_object(rng, S, specs, bg)
    shapes = sorted(scene.shapes, key=lambda s: s.cx)
    s = rng.choice(shapes)
    used = {x.color for x in shapes}
    # Left/right statements only where the leftmost and rightmost shapes are clearly apart horizontally.
    separated = k >= 2 and shapes[-1].cx - shapes[0].cx >= 0.25 * S
    if label == "entailment":
        options = [f"There is {_article(s.desc)}.", f"The {s.kind} is {s.color}.",
                   f"There {'is one shape' if k == 1 else f'are {NUMBER_WORDS[k]} shapes'} in the picture."]
        if separated:
            options.append(f"The {shapes[0].desc} is to the left of the {shapes[-1].desc}.")
    elif label == "contradiction":
        other = rng.choice([c for c in COLOR_NAMES if c not in used])
        m = rng.choice([n for n in range(1, 6) if n != k])
        options = [f"The {s.kind} is {other}.", "There are no shapes in the picture.",
                   f"There {'is one shape' if m == 1 else f'are {NUMBER_WORDS[m]} shapes'} in the picture."]
        if separated:
            options.append(f"The {shapes[-1].desc} is to the left of the {shapes[0].desc}.")
    else:
        options = [t.format(s=s.kind, d=s.desc) for t in NEUTRAL_TEMPLATES]
    hypothesis = rng.choice(options)
    prompt = (f"Premise: the image. Hypothesis: {hypothesis}\nDoes the image entail the hypothesis, contradict it, "
              f"or neither?\nOptions: {lettered(list(SNLI_LABELS))}")
    return scene, prompt, label, list(SNLI_LABELS)


def textvqa_answers(rng: random.Random, word: str) -> list[str]:
    """Ten annotator answers around ``word``: 2-10 exact copies (the target is always the strict mode), the rest
    from variants that the VQA normalisation maps to the word ('CAT', 'the cat', 'cat.') or does not ('cats',
    'cat sign', a similar word, 'unanswerable')."""
    n_exact = rng.choices(range(2, 11), weights=(1, 2, 3, 4, 4, 4, 3, 2, 2))[0]
    variants = [word.upper(), word.capitalize(), f"the {word}", f"{word}.", word + ("es" if word[-1] in "sxz" else "s"), f"{word} sign",
                _similar_word(rng, word), "unanswerable"]
    others: list[str] = []
    while len(others) < 10 - n_exact:
        v = rng.choice(variants)
        if others.count(v) + 1 < n_exact:
            others.append(v)
    answers = [word] * n_exact + others
    rng.shuffle(answers)
    return answers


def _e_textvqa(rng, S):
    n = rng.choice((1, 2))
    words = rng.sample(WORDS, n)
    scene, signs = sign_scene(rng, S, words)
    color, word = rng.choice(signs)
    question = "What does the sign say?" if n == 1 else f"What word is written on the {color} sign?"
    return scene, question, word, None


def _eval_row(name: str, i: int, prompt: str, target: str, options: list[str] | None) -> dict:
    row = {"unique_id": f"{name}-{i:05d}", "prompt": prompt, "target": target, "image_path": f"images/{i:05d}.png"}
    if options:  # not in the released files; lets a scorer map an answered letter back to its label
        row["options"] = options
    return row


def write_simple_set(out: Path, seed: int, size: int, name: str, n: int, bar) -> dict:
    """Write one MixLoRA-format set (cifar10, cifar100, mnist, vsr, snli_ve, textvqa); labels are cycled where the
    label set is small, so the set is balanced."""
    rng = _rng(seed, name)
    root = out / "eval" / name
    rows = []
    for i in range(n):
        if name == "vsr":
            scene, prompt, target, options = _e_vsr(rng, size, label=(i % 2 == 0))
        elif name == "snli_ve":
            scene, prompt, target, options = _e_snli_ve(rng, size, SNLI_LABELS[i % 3])
        else:
            make = {"cifar10": _e_cifar10, "cifar100": _e_cifar100, "mnist": _e_mnist, "textvqa": _e_textvqa}[name]
            scene, prompt, target, options = make(rng, size)
        row = _eval_row(name, i, prompt, target, options)
        if name == "textvqa":
            row["answers"] = textvqa_answers(rng, target)
        _save(render(scene), root / row["image_path"])
        rows.append(row)
        bar.update(1)
    _write_jsonl(root / "test.jsonl", rows)
    e = EVAL_INFO[name]
    entry = {"path": f"eval/{name}/test.jsonl", "records": n, "images": n, "closest_training_tasks": list(e.closest),
             "zero_shot_reason": e.reason, "metric": e.metric}
    labels = {"cifar10": list(SHAPES), "cifar100": list(CIFAR100_LABELS), "mnist": list("0123456789"),
              "vsr": ["True", "False"], "snli_ve": list(SNLI_LABELS)}
    if name in labels:
        entry["label_set"] = labels[name]
    return entry
