"""Shared by the synthetic-suite tests (test_synthetic.py, test_synthetic_eval_sets.py): the small suite they
read, and the pixel tools that check its answers against the rendered images.

The tools are independent of the generator: colours are identified by the nearest CSS colour (ANCHORS, not the
generator's palette), objects by exact-colour pixel groups, counts by connected components (a plain flood fill),
positions by pixel centroids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixlora.data import synthetic


SMALL = dict(per_task=12, eval_per_task=12, mme_images=6, stage1_size=12, progress=False)

# CSS named colours: the independent meaning of each colour word.
ANCHORS = {"red": (255, 0, 0), "orange": (255, 165, 0), "yellow": (255, 255, 0), "green": (0, 128, 0),
           "blue": (0, 0, 255), "purple": (128, 0, 128), "pink": (255, 192, 203), "brown": (139, 69, 19),
           "black": (0, 0, 0), "white": (255, 255, 255)}


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite") / "syn"
    synthetic.generate_suite(out, seed=0, image_size=64, **SMALL)
    return out


@pytest.fixture(scope="module")
def train(suite) -> list[dict]:
    return json.loads((suite / "train.json").read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)


# ---------------------------------------------------------------------------------------------------- pixel tools


def _border_colors(a: np.ndarray) -> set[tuple[int, int, int]]:
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return {tuple(int(v) for v in c) for c in np.unique(edge, axis=0)}


def _plain(a: np.ndarray) -> bool:
    """Whether the image has a plain background (textured ones hold small texture marks away from the border)."""
    border = _border_colors(a)
    return len(border) == 1 and next(iter(border)) in set(synthetic.PLAIN_BACKGROUNDS.values())


def _nearest_anchor(rgb) -> str:
    return min(ANCHORS, key=lambda n: sum((int(x) - y) ** 2 for x, y in zip(rgb, ANCHORS[n])))


def _object_mask(a: np.ndarray, color: str) -> np.ndarray:
    """Pixels of the largest exact-colour group (not a background colour) whose nearest CSS colour is ``color``."""
    border = _border_colors(a)
    colors, counts = np.unique(a.reshape(-1, 3), axis=0, return_counts=True)
    best = None
    for c, n in zip(colors, counts):
        c = tuple(int(v) for v in c)
        if c not in border and _nearest_anchor(c) == color and (best is None or n > best[1]):
            best = (c, n)
    assert best is not None, f"no {color} object in the image"
    return np.all(a == best[0], axis=-1)


def _foreground_colors(a: np.ndarray, min_pixels: int = 6) -> list[str]:
    border = _border_colors(a)
    colors, counts = np.unique(a.reshape(-1, 3), axis=0, return_counts=True)
    return [_nearest_anchor(c) for c, n in zip(colors, counts)
            if tuple(int(v) for v in c) not in border and n >= min_pixels]


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _extent(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    return int(max(xs.max() - xs.min(), ys.max() - ys.min()) + 1)


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean mask (plain flood fill)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        count += 1
        stack = [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < h and 0 <= u < w and mask[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        stack.append((v, u))
    return count


def _holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    return {"left": a[0] < b[0] - 5, "right": a[0] > b[0] + 5, "above": a[1] < b[1] - 5,
            "below": a[1] > b[1] + 5}[relation]
