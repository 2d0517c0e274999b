"""Scene sampling: backgrounds with enough contrast, non-overlapping placement, and the scene builders the task
families share (one object, several, a related pair, text, signs, an overlapping pair, a handwritten digit).

Every builder draws only from the ``random.Random`` it is given, in a fixed order, so a stream and its arguments
determine the scene exactly.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

from .rendering import PanelItem, Scene, ShapeItem, StrokeItem, TextItem, fit_scale, text_mask
from .vocab import _MIN_CONTRAST, _TEXTURED, BACKGROUNDS, COLORS, PLAIN_BACKGROUNDS, SCENES, SHAPES, SIZES


def _background_palette(bg: str) -> tuple[tuple[int, int, int], ...]:
    return (PLAIN_BACKGROUNDS[bg],) if bg in PLAIN_BACKGROUNDS else _TEXTURED[bg]


@lru_cache(maxsize=None)
def allowed_colors(bg: str) -> tuple[str, ...]:
    """Object colours that contrast with every colour of background ``bg``."""
    return tuple(c for c, rgb in COLORS.items()
                 if all(math.dist(rgb, p) >= _MIN_CONTRAST for p in _background_palette(bg)))


def _pick_background(rng: random.Random, p_scene: float, need: tuple[str, ...] = (), n_colors: int = 1) -> str:
    """A plain background, or with probability ``p_scene`` a textured scene, on which all colours in ``need`` (and at
    least ``n_colors`` colours in total) are allowed."""
    pool = SCENES if rng.random() < p_scene else tuple(PLAIN_BACKGROUNDS)
    fits = [b for b in pool if set(need) <= set(allowed_colors(b)) and len(allowed_colors(b)) >= n_colors]
    if not fits:  # e.g. white on every plain background: fall back to any background that shows the colour
        fits = [b for b in BACKGROUNDS if b != "room" and set(need) <= set(allowed_colors(b))]
    return rng.choice(fits)


def _radius(rng: random.Random, size: int, size_name: str) -> float:
    lo, hi = SIZES[size_name]
    return rng.uniform(lo, hi) * size


def _apart(a: tuple[float, float, float], b: tuple[float, float, float], gap: float) -> bool:
    # Boxes of half-extent r separated by at least ``gap`` pixels on one axis never touch (not even diagonally).
    return abs(a[0] - b[0]) >= a[2] + b[2] + gap or abs(a[1] - b[1]) >= a[2] + b[2] + gap


def place(rng: random.Random, size: int, radii: list[float], gap: float = 3.0, margin: float = 2.0,
          taken: tuple[tuple[float, float, float], ...] = ()) -> list[tuple[float, float]]:
    """Random centres for objects of half-extents ``radii``, inside the image (``margin`` px from the border) and
    pairwise at least ``gap`` px apart (boxes, also from ``taken`` = (cx, cy, r) triples)."""
    for _ in range(200):
        boxes, centres = list(taken), []
        for r in radii:
            lo, hi = margin + r, size - margin - r
            if hi < lo:
                raise ValueError(f"an object of half-extent {r:.1f}px does not fit a {size}px image")
            for _ in range(200):
                c = (rng.uniform(lo, hi), rng.uniform(lo, hi), r)
                if all(_apart(c, b, gap) for b in boxes):
                    break
            else:
                break
            boxes.append(c)
            centres.append(c[:2])
        if len(centres) == len(radii):
            return centres
    raise RuntimeError(f"could not place {len(radii)} objects in a {size}px image; use a larger --image-size")


def _colors_for(rng: random.Random, bg: str, k: int, distinct: bool = True) -> list[str]:
    pool = list(allowed_colors(bg))
    return rng.sample(pool, k) if distinct else [rng.choice(pool) for _ in range(k)]


def single_object(rng: random.Random, size: int, *, shape: str | None = None, color: str | None = None,
                  size_name: str | None = None, position: str | None = None, bg: str | None = None,
                  p_scene: float = 0.35) -> tuple[Scene, ShapeItem]:
    """One shape on a background. ``position`` (a key of :data:`POSITIONS`) puts its centre near that edge (within
    the outer quarter of the side, and within the middle sixth of the other axis) or in the middle tenth (center);
    only small and medium shapes fit the edge regions."""
    bg = bg or _pick_background(rng, p_scene, need=(color,) if color else ())
    color = color or rng.choice(allowed_colors(bg))
    shape = shape or rng.choice(SHAPES)
    size_name = size_name or rng.choice(tuple(SIZES))
    r = _radius(rng, size, size_name)
    if position is None:
        cx, cy = place(rng, size, [r])[0]
    else:
        edge = (max(r + 2, 0.12 * size), max(r + 2, 0.12 * size) + 0.08 * size)
        mid = (0.42 * size, 0.58 * size)
        regions = {"left": (edge, mid), "right": ((size - edge[1], size - edge[0]), mid),
                   "top": (mid, edge), "bottom": (mid, (size - edge[1], size - edge[0])),
                   "center": ((0.45 * size, 0.55 * size), (0.45 * size, 0.55 * size))}
        (x0, x1), (y0, y1) = regions[position]
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
    item = ShapeItem(shape, color, cx, cy, r)
    return Scene(size, bg, rng.getrandbits(32), (item,)), item


def multi_object(rng: random.Random, size: int, specs: list[tuple[str, str]], bg: str,
                 size_names: tuple[str, ...] = ("small", "medium")) -> Scene:
    """Non-overlapping shapes given as (kind, colour) pairs."""
    radii = [_radius(rng, size, rng.choice(size_names)) for _ in specs]
    centres = place(rng, size, radii)
    items = tuple(ShapeItem(k, c, x, y, r) for (k, c), (x, y), r in zip(specs, centres, radii))
    return Scene(size, bg, rng.getrandbits(32), items)


def pair_relation(rng: random.Random, size: int, relation: str, bg: str | None = None, p_scene: float = 0.3,
                  extra: int = 0) -> tuple[Scene, ShapeItem, ShapeItem]:
    """Two shapes of different colours where A is ``relation`` (left/right/above/below) of B: centres at least 0.35
    of the side apart on that axis and at most 0.12 apart on the other; ``extra`` distractors are added."""
    bg = bg or _pick_background(rng, p_scene, n_colors=2 + extra)
    ca, cb, *cx_extra = _colors_for(rng, bg, 2 + extra)
    ra, rb = (_radius(rng, size, rng.choice(("small", "medium"))) for _ in range(2))
    for _ in range(500):
        along_a = rng.uniform(ra + 2, size - ra - 2)
        along_b = along_a + (1 if relation in ("left", "above") else -1) * rng.uniform(0.35, 0.65) * size
        if not rb + 2 <= along_b <= size - rb - 2:
            continue
        across = rng.uniform(0.3, 0.7) * size
        across_a, across_b = across + rng.uniform(-0.06, 0.06) * size, across + rng.uniform(-0.06, 0.06) * size
        if relation in ("left", "right"):
            (xa, ya), (xb, yb) = (along_a, across_a), (along_b, across_b)
        else:
            (xa, ya), (xb, yb) = (across_a, along_a), (across_b, along_b)
        break
    else:
        raise RuntimeError(f"could not place a {relation} pair in a {size}px image")
    a = ShapeItem(rng.choice(SHAPES), ca, xa, ya, ra)
    b = ShapeItem(rng.choice(SHAPES), cb, xb, yb, rb)
    radii = [_radius(rng, size, "small") for _ in cx_extra]
    centres = place(rng, size, radii, taken=((xa, ya, ra), (xb, yb, rb))) if radii else []
    extras = tuple(ShapeItem(rng.choice(SHAPES), c, x, y, r) for c, (x, y), r in zip(cx_extra, centres, radii))
    return Scene(size, bg, rng.getrandbits(32), (a, b) + extras), a, b


def text_scene(rng: random.Random, size: int, text: str, *, color: str | None = None, bg: str | None = None,
               max_width: float = 0.8, max_height: float = 0.6, p_scene: float = 0.3) -> tuple[Scene, TextItem]:
    """``text`` in the bitmap font, as large as fits ``max_width`` x ``max_height`` of the side, at a random spot."""
    bg = bg or _pick_background(rng, p_scene, need=(color,) if color else ())
    color = color or rng.choice(allowed_colors(bg))
    scale = fit_scale(text, max_width * size, max_height * size)
    w, h = text_mask(text, scale).size
    x, y = rng.randint(2, max(2, size - w - 2)), rng.randint(2, max(2, size - h - 2))
    item = TextItem(text, color, x, y, scale)
    return Scene(size, bg, rng.getrandbits(32), (item,)), item


def _ink_on(panel_color: str) -> str:
    return "black" if sum(COLORS[panel_color]) > 380 else "white"


def sign_scene(rng: random.Random, size: int, words: list[str], bg: str | None = None
               ) -> tuple[Scene, list[tuple[str, str]]]:
    """One or two signs (coloured panels with a word each, stacked vertically); returns (scene, [(panel colour,
    word)]). The word is black on light panels and white on dark ones."""
    bg = bg or _pick_background(rng, 0.5, n_colors=len(words))
    panel_colors = _colors_for(rng, bg, len(words))
    band = size / len(words)
    items, signs = [], []
    for k, (word, pc) in enumerate(zip(words, panel_colors)):
        pad = max(2, size // 21)
        scale = fit_scale(word, 0.8 * size - 2 * pad, band - 2 * pad - 4, max_scale=3)
        w, h = text_mask(word, scale).size
        x0 = rng.randint(2, max(2, size - w - 2 * pad - 3))
        y0 = round(k * band + rng.uniform(1, max(1, band - h - 2 * pad - 2)))
        items.append(PanelItem(pc, (x0, y0, x0 + w + 2 * pad, y0 + h + 2 * pad)))
        items.append(TextItem(word, _ink_on(pc), x0 + pad + 1, y0 + pad + 1, scale))
        signs.append((pc, word))
    return Scene(size, bg, rng.getrandbits(32), tuple(items)), signs


def overlap_pair(rng: random.Random, size: int, bg: str, front_size: str, back_size: str, front_lower: bool = False
                 ) -> tuple[Scene, ShapeItem, ShapeItem]:
    """Two overlapping shapes; the front one is drawn last and so occludes part of the back one. With
    ``front_lower`` the front object also stands lower in the image (a ground-plane depth cue)."""
    cf, cb = _colors_for(rng, bg, 2)
    rf, rb = _radius(rng, size, front_size), _radius(rng, size, back_size)
    # The back object's centre stays outside the front object, so a good part of it remains visible.
    lo, hi = max(0.6 * (rf + rb), rf + 0.1 * rb), 0.9 * (rf + rb)
    for _ in range(1000):
        d = rng.uniform(lo, hi)
        ang = rng.uniform(0.15 * math.pi, 0.85 * math.pi) if front_lower else rng.uniform(0, 2 * math.pi)
        xb, yb = rng.uniform(rb + 2, size - rb - 2), rng.uniform(rb + 2, size - rb - 2)
        xf, yf = xb + d * math.cos(ang), yb + d * math.sin(ang)
        if rf + 2 <= xf <= size - rf - 2 and rf + 2 <= yf <= size - rf - 2:
            break
    else:
        raise RuntimeError(f"could not place an overlapping pair in a {size}px image")
    # Rings and crosses hide little, so the occlusion cue is clearer with solid shapes.
    solid = ("circle", "square", "triangle", "diamond", "hexagon", "pentagon")
    back = ShapeItem(rng.choice(solid), cb, xb, yb, rb)
    front = ShapeItem(rng.choice(solid), cf, xf, yf, rf)
    return Scene(size, bg, rng.getrandbits(32), (back, front)), front, back


# Digit strokes in the unit square (x right, y down), drawn with jitter like handwriting; "0" and "8" are loops.
def _loop(cx: float, cy: float, rx: float, ry: float, n: int = 14) -> list[tuple[float, float]]:
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n + 1)]


DIGIT_STROKES: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "0": (tuple(_loop(0.5, 0.5, 0.27, 0.4)),),
    "1": (((0.35, 0.25), (0.55, 0.1), (0.55, 0.9)),),
    "2": (((0.22, 0.3), (0.35, 0.13), (0.62, 0.12), (0.78, 0.3), (0.7, 0.52), (0.22, 0.9), (0.8, 0.9)),),
    "3": (((0.22, 0.14), (0.75, 0.14), (0.45, 0.45), (0.72, 0.58), (0.76, 0.78), (0.52, 0.92), (0.2, 0.84)),),
    "4": (((0.65, 0.9), (0.65, 0.1), (0.15, 0.65), (0.85, 0.65)),),
    "5": (((0.78, 0.12), (0.28, 0.12), (0.24, 0.45), (0.6, 0.42), (0.8, 0.62), (0.72, 0.85), (0.45, 0.92),
           (0.2, 0.83)),),
    "6": (((0.7, 0.1), (0.42, 0.28), (0.26, 0.6), (0.32, 0.86), (0.56, 0.92), (0.75, 0.76), (0.68, 0.56),
           (0.45, 0.52), (0.27, 0.64)),),
    "7": (((0.2, 0.12), (0.8, 0.12), (0.42, 0.9)),),
    "8": (tuple(_loop(0.5, 0.3, 0.2, 0.19)), tuple(_loop(0.5, 0.7, 0.25, 0.21))),
    "9": (((0.74, 0.38), (0.55, 0.5), (0.32, 0.42), (0.3, 0.2), (0.52, 0.1), (0.73, 0.2), (0.74, 0.4),
           (0.66, 0.9)),),
}


def handwritten_digit(rng: random.Random, size: int, digit: str) -> Scene:
    """An MNIST-like digit: white jittered pen strokes on black, random scale, slant and offset."""
    scale = rng.uniform(0.62, 0.8) * size
    slant = rng.uniform(-0.25, 0.25)
    ox = (size - scale) / 2 + rng.uniform(-0.06, 0.06) * size
    oy = (size - scale) / 2 + rng.uniform(-0.06, 0.06) * size
    width = max(2, round(rng.uniform(0.07, 0.1) * size))
    strokes = []
    for stroke in DIGIT_STROKES[digit]:
        pts = []
        for x, y in stroke:
            x, y = x + rng.gauss(0, 0.02), y + rng.gauss(0, 0.02)
            pts.append((ox + (x + slant * (0.5 - y)) * scale, oy + y * scale))
        strokes.append(StrokeItem(tuple(pts), width, "white"))
    return Scene(size, "dark gray", rng.getrandbits(32), (PanelItem("black", (0, 0, size - 1, size - 1)),
                                                           *strokes))
