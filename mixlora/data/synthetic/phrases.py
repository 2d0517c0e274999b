"""Text helpers shared by the task families: Vision-Flan inline options and answers, articles, captions and
look-alike words."""

from __future__ import annotations

import random

from .rendering import Scene, ShapeItem
from .vocab import BACKGROUND_PHRASES, OPTION_LETTERS, SIZES, WORDS


def lettered(options: list[str]) -> str:
    """'(a) x (b) y ...' (Vision-Flan inline options)."""
    return " ".join(f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(options))


def option_answer(options: list[str], index: int) -> str:
    """The Vision-Flan answer for option ``index``: '(b) red'."""
    return f"({OPTION_LETTERS[index]}) {options[index]}"


def _options(rng: random.Random, correct: str, pool: tuple[str, ...] | list[str], k: int) -> tuple[list[str], int]:
    distractors = rng.sample([p for p in pool if p != correct], k - 1)
    index = rng.randrange(k)
    return distractors[:index] + [correct] + distractors[index:], index


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_of(item: ShapeItem, size: int) -> str:
    frac = item.r / size
    return min(SIZES, key=lambda s: abs(frac - sum(SIZES[s]) / 2))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene, with_sizes: bool = True) -> str:
    """One sentence naming every shape (left to right) and the background: 'A large red circle and a small blue
    star on grass.'"""
    shapes = sorted(scene.shapes, key=lambda s: s.cx)
    parts = [_article(f"{_size_of(s, scene.size)} {s.desc}" if with_sizes else s.desc) for s in shapes]
    text = f"{_join(parts)} on {BACKGROUND_PHRASES[scene.background]}."
    return text[0].upper() + text[1:]


def _similar_word(rng, word: str) -> str:
    shared = [w for w in WORDS if w != word and (w[0] == word[0] or w[1:] == word[1:] or w[-1] == word[-1])]
    return rng.choice(shared or [w for w in WORDS if w != word])
