"""Procedural synthetic task suite: Vision-Flan-style training tasks and zero-shot held-out benchmarks.

The repository is demonstrated and tested on CPU without downloading anything, and this module is how: a tiny
LLaVA-style model is aligned on ``stage1.json``, instruction-tuned on the training tasks of
``train.json`` and evaluated zero-shot on held-out sets written in the public formats of the paper's benchmarks.
The formats and the design (which training task teaches what, why each held-out set is zero-shot) are described in
``docs/synthetic.md``; the reference formats are in ``docs/benchmarks.md``.

Output layout of :func:`generate_suite` (``DIR`` = ``out_dir``)::

    DIR/train.json                      Vision-Flan records (list): id, image, task_name, conversations
    DIR/stage1.json                     LLaVA "plain" alignment records: human "<image>", gpt = short description
    DIR/images/<task_name>/<n>.png      training images (``image`` is relative to DIR/images/)
    DIR/images/stage1_align/<n>.png     alignment images
    DIR/eval/mme/<subtask>/<stem>.png + <stem>.txt      MME flat layout ("question<TAB>Yes|No", 2 lines)
    DIR/eval/mme/scene/images/<stem>.png + questions_answers_YN/<stem>.txt   (the release's layout for scene)
    DIR/eval/cvbench/test.jsonl + img/{2D/count,2D/relation,3D/depth,3D/distance}/*.png
    DIR/eval/<set>/test.jsonl + images/*.png            MixLoRA eval JSONL: unique_id, prompt, target, image_path
    DIR/eval/pope/{random,popular,adversarial}.jsonl + images/*.png
    DIR/task_definitions.json           {key: definition text}: the 28 training task names, then "mme/<subtask>",
                                        "cvbench/<task>", "pope" and each simple set (task routing)
    DIR/manifest.json                   seed, sizes, counts, closest training tasks and zero-shot reasons

Every image is an RGB PNG of ``image_size`` x ``image_size`` pixels. Shapes, panels and glyphs are drawn without
anti-aliasing, so each object is one exact RGB value from :data:`COLORS` (tests check pixels against that). The
generator is deterministic: every component draws from its own ``random.Random(f"{seed}/{component}")`` stream and
never iterates over a ``set``, so the same arguments give byte-identical files in any process.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

# --------------------------------------------------------------------------------------------------------------
# Vocabulary. Kept small on purpose: the tiny model's BPE (~1k tokens) is trained on this corpus.
# --------------------------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 225, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 225),
    "purple": (140, 60, 190),
    "pink": (245, 130, 200),
    "brown": (130, 80, 40),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
COLOR_NAMES = tuple(COLORS)

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "pentagon", "ring", "arrow")
PLURALS = {s: (s + "es" if s.endswith("ss") else s + "s") for s in SHAPES}

# Half-extent r of a shape as a fraction of the image side; ranges leave a gap so that every small object is
# visibly smaller than every medium one, and medium than large, whatever the shape.
SIZES: dict[str, tuple[float, float]] = {"small": (0.06, 0.08), "medium": (0.12, 0.14), "large": (0.20, 0.23)}
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("left", "right", "above", "below")  # A is <relation> B
RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

PLAIN_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light gray": (220, 220, 220),
    "dark gray": (70, 70, 70),
    "beige": (235, 225, 195),
}
SCENES = ("sky", "grass", "sea", "desert", "snow", "night")
# Base colour and texture colour of each textured background; "room" (wall over floor) is used by the 3D tasks.
_TEXTURED: dict[str, tuple[tuple[int, int, int], ...]] = {
    "sky": ((140, 195, 240), (245, 245, 250)),
    "grass": ((80, 155, 60), (45, 115, 40)),
    "sea": ((35, 95, 165), (110, 165, 220)),
    "desert": ((225, 190, 120), (190, 150, 85)),
    "snow": ((240, 242, 248), (195, 200, 215)),
    "night": ((15, 20, 50), (235, 235, 200)),
    "room": ((205, 200, 190), (150, 115, 85)),
}
BACKGROUNDS = tuple(PLAIN_BACKGROUNDS) + tuple(_TEXTURED)
BACKGROUND_PHRASES = {
    "light gray": "a light gray background", "dark gray": "a dark gray background", "beige": "a beige background",
    "sky": "a blue sky", "grass": "grass", "sea": "the sea", "desert": "sand", "snow": "snow",
    "night": "a night sky", "room": "the floor of a room",
}
# An object colour is allowed on a background only if it is this far (RGB Euclidean) from every background colour.
_MIN_CONTRAST = 100.0

WORDS = ("cat", "dog", "sun", "car", "bus", "map", "cup", "pen", "hat", "key", "box", "fox",
         "owl", "bed", "egg", "jam", "net", "pig", "rat", "van", "web", "zip", "arm", "bag")
# Single glyphs for character reading; O and I are left out because the bitmap font draws them like 0 and 1.
CHARACTERS = tuple("ABCDEFGHJKLMNPRSTUVWXYZ") + tuple("0123456789")

OPTION_LETTERS = "abcdefghijklmnopqrstuvwxyz"
MME_SUFFIX = " Please answer yes or no."
CVBENCH_SUFFIX = " Select from the following choices."

# --------------------------------------------------------------------------------------------------------------
# Rendering: a scene is a background plus drawable items, rendered in order (later items occlude earlier ones).
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeItem:
    """A filled shape of kind ``kind`` centred at (cx, cy) inside the box [cx-r, cx+r] x [cy-r, cy+r] (pixels)."""

    kind: str
    color: str
    cx: float
    cy: float
    r: float

    @property
    def desc(self) -> str:
        return f"{self.color} {self.kind}"

    def draw(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        rgb = COLORS[self.color]
        box = [round(self.cx - self.r), round(self.cy - self.r), round(self.cx + self.r), round(self.cy + self.r)]
        if self.kind == "circle":
            draw.ellipse(box, fill=rgb)
        elif self.kind == "ring":
            draw.ellipse(box, outline=rgb, width=max(2, round(0.3 * self.r)))
        else:
            draw.polygon([(round(x), round(y)) for x, y in shape_polygon(self.kind, self.cx, self.cy, self.r)],
                         fill=rgb)


def _regular(cx: float, cy: float, r: float, n: int, phase_deg: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(math.radians(phase_deg + 360.0 * k / n)),
             cy + r * math.sin(math.radians(phase_deg + 360.0 * k / n))) for k in range(n)]


def shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape; every vertex lies inside the box of half-extent ``r`` and the centre is inside
    the polygon (so the centre pixel always carries the shape's colour)."""
    if kind == "square":
        h = 0.85 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return _regular(cx, cy, r, 3, -90)
    if kind == "diamond":
        return _regular(cx, cy, r, 4, -90)
    if kind == "pentagon":
        return _regular(cx, cy, r, 5, -90)
    if kind == "hexagon":
        return _regular(cx, cy, r, 6, 0)
    if kind == "star":
        outer, inner = _regular(cx, cy, r, 5, -90), _regular(cx, cy, 0.45 * r, 5, -54)
        return [p for pair in zip(outer, inner) for p in pair]
    if kind == "cross":
        w = 0.33 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w)]
        return [(cx + x, cy + y) for x, y in pts]
    if kind == "arrow":
        pts = [(-r, -0.3 * r), (0.1 * r, -0.3 * r), (0.1 * r, -0.75 * r), (r, 0.0), (0.1 * r, 0.75 * r),
               (0.1 * r, 0.3 * r), (-r, 0.3 * r)]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(f"shape kind {kind!r} is not polygonal; choose one of {', '.join(SHAPES)}")


@lru_cache(maxsize=None)
def _font() -> ImageFont.ImageFont:
    # Pillow's built-in bitmap font: no download, and identical pixels on every machine (unlike FreeType hinting).
    return ImageFont.load_default_imagefont()


@lru_cache(maxsize=4096)
def text_mask(text: str, scale: int) -> Image.Image:
    """Binary ("L", 0/255) mask of ``text`` in the bitmap font, cropped to its ink and enlarged ``scale`` times by
    pixel replication (blocky strokes, no grey levels)."""
    canvas = Image.new("L", (8 * len(text) + 8, 16), 0)
    ImageDraw.Draw(canvas).text((1, 1), text, fill=255, font=_font())
    ink = canvas.crop(canvas.getbbox())
    return ink.resize((ink.width * scale, ink.height * scale), Image.Resampling.NEAREST)


def fit_scale(text: str, max_width: float, max_height: float, max_scale: int = 8) -> int:
    """Largest integer scale (at least 1) at which ``text`` fits in max_width x max_height pixels."""
    ink = text_mask(text, 1)
    return max(1, min(max_scale, int(max_width // ink.width), int(max_height // ink.height)))


@dataclass(frozen=True)
class TextItem:
    """Bitmap-font text with its ink's top-left corner at (x, y)."""

    text: str
    color: str
    x: int
    y: int
    scale: int

    @property
    def size(self) -> tuple[int, int]:
        return text_mask(self.text, self.scale).size

    def draw(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        image.paste(COLORS[self.color], (self.x, self.y), text_mask(self.text, self.scale))


@dataclass(frozen=True)
class PanelItem:
    """A filled rectangle (a sign or logo plate), box = (x0, y0, x1, y1) inclusive."""

    color: str
    box: tuple[int, int, int, int]

    def draw(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        draw.rectangle(self.box, fill=COLORS[self.color])


@dataclass(frozen=True)
class StrokeItem:
    """A pen stroke through ``points`` (used for the handwriting-like MNIST digits)."""

    points: tuple[tuple[float, float], ...]
    width: int
    color: str

    def draw(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        draw.line([(round(x), round(y)) for x, y in self.points], fill=COLORS[self.color], width=self.width,
                  joint="curve")


@dataclass(frozen=True)
class Scene:
    """What an image shows: ``background`` (a key of :data:`BACKGROUNDS`), a seed for its texture, and the items
    drawn on top in order."""

    size: int
    background: str
    texture_seed: int
    items: tuple = ()

    @property
    def shapes(self) -> list[ShapeItem]:
        return [it for it in self.items if isinstance(it, ShapeItem)]


def _draw_texture(draw: ImageDraw.ImageDraw, name: str, size: int, rng: random.Random) -> None:
    base, tex = _TEXTURED[name]
    s = size
    draw.rectangle([0, 0, s - 1, s - 1], fill=base)
    # Textures are a few flat-colour primitives rather than per-pixel noise, which keeps the PNGs small.
    if name == "sky":
        for _ in range(rng.randint(1, 3)):
            x, y, w = rng.uniform(0, s), rng.uniform(0, 0.8 * s), rng.uniform(0.08, 0.14) * s
            for dx in (-w, 0.0, w):
                draw.ellipse([x + dx - w, y - 0.6 * w, x + dx + w, y + 0.6 * w], fill=tex)
    elif name == "grass":
        for _ in range(s // 2):
            x, y = rng.uniform(0, s), rng.uniform(0, s)
            draw.line([(x, y), (x + rng.uniform(-1.5, 1.5), y - rng.uniform(0.05, 0.1) * s)], fill=tex, width=1)
    elif name == "sea":
        for k in range(rng.randint(4, 6)):
            y0, ph = (k + rng.uniform(0.2, 0.8)) * s / 6, rng.uniform(0, 6.28)
            draw.line([(x, y0 + 1.5 * math.sin(ph + x / 3)) for x in range(0, s + 1, 2)], fill=tex, width=1)
    elif name == "desert":
        for _ in range(rng.randint(2, 3)):
            y0, w = rng.uniform(0.3, 0.9) * s, rng.uniform(0.6, 1.2) * s
            x0 = rng.uniform(-0.3 * s, 0.6 * s)
            draw.arc([x0, y0, x0 + w, y0 + 0.5 * w], 190, 350, fill=tex, width=2)
    elif name == "snow":
        for _ in range(s // 2):
            x, y = rng.randrange(s), rng.randrange(s)
            draw.rectangle([x, y, x + 1, y + 1], fill=tex)
    elif name == "night":
        for _ in range(s // 3):
            draw.point((rng.randrange(s), rng.randrange(s)), fill=tex)
    elif name == "room":
        horizon = round(0.45 * s)
        draw.rectangle([0, horizon, s - 1, s - 1], fill=tex)
    else:
        raise ValueError(f"unknown textured background {name!r}; choose one of {', '.join(_TEXTURED)}")


def render(scene: Scene) -> Image.Image:
    """Render ``scene`` to an RGB image of scene.size x scene.size pixels."""
    if scene.background in PLAIN_BACKGROUNDS:
        image = Image.new("RGB", (scene.size, scene.size), PLAIN_BACKGROUNDS[scene.background])
        draw = ImageDraw.Draw(image)
    elif scene.background in _TEXTURED:
        image = Image.new("RGB", (scene.size, scene.size))
        draw = ImageDraw.Draw(image)
        _draw_texture(draw, scene.background, scene.size, random.Random(scene.texture_seed))
    else:
        raise ValueError(f"unknown background {scene.background!r}; choose one of {', '.join(BACKGROUNDS)}")
    for item in scene.items:
        item.draw(image, draw)
    return image


# --------------------------------------------------------------------------------------------------------------
# Scene sampling.
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Text helpers.
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Training tasks (Vision-Flan style).
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One instance of a task: the scene, the values for the phrasing's {fields}, the answer, and the inline options
    (or None)."""

    scene: Scene
    fields: dict
    answer: str
    options: list[str] | None = None


@dataclass(frozen=True)
class TrainTask:
    """A Vision-Flan-style task: name '<Source>+<task>', >=3 instruction phrasings with {fields}, an answer style,
    the concepts it teaches, and ``sample(rng, image_size) -> Sample``."""

    name: str
    phrasings: tuple[str, ...]
    answer_style: str
    teaches: str
    sample: Callable[[random.Random, int], Sample]


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


TRAIN_TASKS: tuple[TrainTask, ...] = (
    TrainTask("SynthShapes+color_classification",
              ("What color is the shape in the image?", "Identify the color of the object shown.",
               "Which color best describes the figure in this picture?"),
              "inline option '(b) red'", "colour names", _t_color_classification),
    TrainTask("SynthShapes+color_name",
              ("Name the color of the object.", "Tell me the color of the figure in one word.",
               "The shape in this picture has which color?"),
              "bare label 'red'", "colour names", _t_color_name),
    TrainTask("SynthShapes+color_verification",
              ("Is the object in the picture {color}?", "Is this shape colored {color}?",
               "Look at the figure. Is its color {color}?"),
              "'Yes' / 'No'", "colour, yes/no answering", _t_color_verification),
    TrainTask("SynthShapes+shape_classification",
              ("What shape is shown in the image?", "Select the shape of the object.",
               "Which of the following shapes appears in the picture?"),
              "inline option '(c) triangle'", "shape names", _t_shape_classification),
    TrainTask("SynthShapes+shape_verification",
              ("Is the object a {shape}?", "Does the picture show a {shape}?", "Is this figure shaped like a {shape}?"),
              "'yes' / 'no' (lower case)", "shape, yes/no answering", _t_shape_verification),
    TrainTask("SynthShapes+size_classification",
              ("How big is the shape? Answer small, medium or large.", "What is the size of the object?",
               "Is the figure small, medium or large?"),
              "bare label 'small' / 'medium' / 'large'", "object size", _t_size_classification),
    TrainTask("SynthShapes+object_description",
              ("Describe the object in a few words.", "Give a short description of the shape.",
               "What do you see in this picture? Answer briefly."),
              "short phrase 'a small red triangle'", "size + colour + shape together", _t_object_description),
    TrainTask("SynthCount+count_digits",
              ("How many shapes are in the image?", "Count the objects in the picture.",
               "What is the number of figures shown?"),
              "digits '4'", "counting", _t_count_digits),
    TrainTask("SynthCount+count_words",
              ("How many objects can you see? Answer in words.", "Count the shapes and write the number as a word.",
               "Tell me, in words, how many figures there are."),
              "number word 'four'", "counting, number words", _t_count_words),
    TrainTask("SynthCount+count_options",
              ("How many shapes does the image contain?", "Choose the number of objects in the picture.",
               "Pick the correct count of figures."),
              "inline option '(c) 4'", "counting with options", _t_count_options),
    TrainTask("SynthCount+count_by_shape",
              ("Count the {plural} in the picture.", "How many {plural} can you find?",
               "What is the number of {plural} shown?"),
              "digits '2' (0 when absent)", "counting one kind among distractors", _t_count_by_shape),
    TrainTask("SynthSpatial+position_classification",
              ("Where is the shape located in the image?", "In which part of the picture is the object?",
               "Choose the position of the figure."),
              "inline option '(b) right'", "absolute position", _t_position_classification),
    TrainTask("SynthSpatial+position_name",
              ("Which side of the image is the shape on?", "Name the region of the picture that holds the object.",
               "Give the location of the figure in one word."),
              "bare label 'top'", "absolute position", _t_position_name),
    TrainTask("SynthSpatial+relation_sentence",
              ("Describe where the {a} is relative to the {b}.", "Where is the {a} compared with the {b}?",
               "Explain the position of the {a} with respect to the {b}."),
              "sentence 'The red circle is to the left of the blue star.'", "relative position", _t_relation_sentence),
    TrainTask("SynthSpatial+relation_which",
              ("Which shape is {side}, the {x} or the {y}?", "Between the {x} and the {y}, which one is {side}?",
               "Of the {x} and the {y}, tell me which is {side}."),
              "phrase 'the red circle'", "relative position, naming objects", _t_relation_which),
    TrainTask("SynthSpatial+distance_judgement",
              ("Are the two shapes close together or far apart?", "Is the distance between the objects small or large? "
               "Answer close or far.", "Do the figures sit near each other or far from each other?"),
              "'close' / 'far'", "distance between objects", _t_distance_judgement),
    TrainTask("SynthDepth+occlusion_front",
              ("Which shape is in front?", "One object covers part of the other. Which one is on top?",
               "Which figure is nearer to the viewer?"),
              "inline option '(a) the red circle'", "occlusion = nearer", _t_occlusion_front),
    TrainTask("SynthCompare+size_comparison",
              ("Which shape is bigger, the {x} or the {y}?", "Which one is larger: the {x} or the {y}?",
               "Compare the {x} and the {y}. Which takes up more space?"),
              "phrase 'the blue square'", "size comparison", _t_size_comparison),
    TrainTask("SynthGlyphs+character_reading",
              ("What character is shown in the image?", "Read the symbol in the picture.",
               "Which letter or digit is written here?"),
              "bare glyph 'K'", "reading letters and digits", _t_character_reading),
    TrainTask("SynthGlyphs+word_transcription",
              ("Transcribe the text in the image.", "What is written in the picture?", "Read the word shown."),
              "bare word 'cat'", "reading words", _t_word_transcription),
    TrainTask("SynthGlyphs+text_color",
              ("What color is the text?", "In which color is the writing printed?",
               "Choose the color of the letters."),
              "inline option '(d) green'", "colour of glyphs", _t_text_color),
    TrainTask("SynthGlyphs+arithmetic",
              ("What is the result of the expression in the image?", "Compute the value of what is written.",
               "Solve the arithmetic shown in the picture."),
              "digits '7'", "reading + computing sums/differences", _t_arithmetic),
    TrainTask("SynthScenes+background_classification",
              ("What is the background of the image?", "Select the kind of scene shown.",
               "Which setting does this picture show?"),
              "inline option '(c) snow'", "scene types", _t_background_classification),
    TrainTask("SynthScenes+scene_name",
              ("Name the scene in one word.", "What kind of place is this?", "Describe the setting with a single word."),
              "bare label 'snow'", "scene types", _t_scene_name),
    TrainTask("SynthObjects+object_listing",
              ("List the shapes in the image from left to right.",
               "Which shapes appear in the picture? Name them from left to right.",
               "Name every shape you see, going left to right."),
              "list 'circle, square, star'", "which objects are present", _t_object_listing),
    TrainTask("SynthCaptions+image_captioning",
              ("Write a caption for this image.", "Describe the image in one sentence.",
               "Give a one-sentence description of the picture."),
              "sentence 'A large red circle on grass.'", "full scene description", _t_image_captioning),
    TrainTask("SynthCaptions+caption_matching",
              ("Does this caption describe the image? Caption: {caption}", "Caption: {caption} Is this caption correct?",
               "Check the caption against the picture: {caption} Does it match?"),
              "'yes' / 'no' (lower case)", "verifying statements about the image", _t_caption_matching),
    TrainTask("SynthCaptions+question_answerability",
              ("Can this question be answered by looking at the image? {question}",
               "Question: {question} Is the answer visible in the picture?",
               "Decide whether the image answers the question: {question}"),
              "'Yes' / 'No'", "what an image can and cannot tell (unobservable facts)", _t_question_answerability),
)


def vision_flan_human_turn(instruction: str, options: list[str] | None) -> str:
    """Vision-Flan human turn: instruction, optional '\\nOptions: (a) ... (b) ...', then '\\n<image>' at the end."""
    text = instruction + (f"\nOptions: {lettered(options)}" if options else "")
    return text + "\n<image>"


# --------------------------------------------------------------------------------------------------------------
# Stage-one alignment captions.
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Held-out sets. Each generator returns the records it wrote and the number of images.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EvalInfo:
    """Manifest entry of a held-out set: closest training tasks and why the set is still zero-shot."""

    closest: tuple[str, ...]
    reason: str
    metric: str


EVAL_INFO: dict[str, EvalInfo] = {
    "mme/existence": EvalInfo(("SynthShapes+shape_verification", "SynthShapes+color_verification",
                               "SynthCaptions+caption_matching", "SynthObjects+object_listing"),
                              "yes/no about a colour+shape conjunction among several objects is never asked",
                              "MME official: 100*acc + 100*acc+"),
    "mme/count": EvalInfo(("SynthCount+count_digits", "SynthCount+count_words", "SynthCount+count_by_shape"),
                          "counts are only ever produced, never verified with yes/no",
                          "MME official: 100*acc + 100*acc+"),
    "mme/position": EvalInfo(("SynthSpatial+relation_sentence", "SynthSpatial+relation_which"),
                             "relative position is never asked as a yes/no question",
                             "MME official: 100*acc + 100*acc+"),
    "mme/color": EvalInfo(("SynthShapes+color_verification", "SynthShapes+color_name"),
                          "colour yes/no is only trained on single-object images, never about one named shape "
                          "among several", "MME official: 100*acc + 100*acc+"),
    "mme/OCR": EvalInfo(("SynthGlyphs+word_transcription", "SynthShapes+color_verification"),
                        "words are only transcribed on plain text images, never checked against a quoted word on a "
                        "logo plate", "MME official: 100*acc + 100*acc+"),
    "mme/numerical_calculation": EvalInfo(("SynthGlyphs+arithmetic", "SynthShapes+color_verification"),
                                          "results are only computed, never verified with yes/no; the '=?' form is "
                                          "never shown", "MME official: 100*acc + 100*acc+"),
    "mme/scene": EvalInfo(("SynthScenes+background_classification", "SynthScenes+scene_name"),
                          "scene types are only named or picked from options, never verified with yes/no",
                          "MME official: 100*acc + 100*acc+"),
    "cvbench/Count": EvalInfo(("SynthCount+count_by_shape", "SynthCount+count_options"),
                              "upper-case lettered choices after 'Select from the following choices.' are never "
                              "trained", "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cvbench/Relation": EvalInfo(("SynthSpatial+relation_sentence", "SynthSpatial+relation_which"),
                                 "the 'where is A located with respect to B' multiple-choice form is never trained",
                                 "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cvbench/Depth": EvalInfo(("SynthDepth+occlusion_front", "SynthCompare+size_comparison"),
                              "'closer to the camera' is never asked; training only teaches occlusion and size",
                              "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cvbench/Distance": EvalInfo(("SynthSpatial+distance_judgement", "SynthSpatial+relation_which"),
                                 "comparing two distances to a reference object is never trained",
                                 "CV-Bench: per-source accuracy, (mean(ADE20K, COCO) + Omni3D) / 2"),
    "cifar10": EvalInfo(("SynthShapes+shape_classification", "SynthShapes+shape_verification"),
                        "the fixed 10-way option list over all shapes is never trained (training shows 4 options)",
                        "accuracy on the label or option after normalisation"),
    "cifar100": EvalInfo(("SynthShapes+object_description", "SynthShapes+color_name",
                          "SynthShapes+shape_classification"),
                         "the 100-way colour+shape label set ('red circle') is never a training label",
                         "accuracy on the label after normalisation"),
    "mnist": EvalInfo(("SynthGlyphs+character_reading", "SynthGlyphs+arithmetic"),
                      "handwriting-like white strokes on black are never seen; training reads bitmap-font glyphs",
                      "accuracy on the digit"),
    "pope": EvalInfo(("SynthObjects+object_listing", "SynthShapes+shape_verification",
                      "SynthCaptions+caption_matching"),
                     "'Is there a X in the image?' over multi-object scenes, with popular and co-occurring "
                     "negatives, is never trained", "POPE: accuracy, precision, recall, F1, yes-ratio per split"),
    "vsr": EvalInfo(("SynthSpatial+relation_sentence", "SynthCaptions+caption_matching"),
                    "the True/False label set is never trained", "binary accuracy"),
    "snli_ve": EvalInfo(("SynthCaptions+caption_matching", "SynthCaptions+question_answerability"),
                        "the entailment/neutral/contradiction label set is never trained", "3-way accuracy"),
    "textvqa": EvalInfo(("SynthGlyphs+word_transcription", "SynthGlyphs+text_color"),
                        "reading the word on one named sign among several is never trained",
                        "VQA accuracy min(#matching answers / 3, 1) over `answers`"),
}


# Task definitions (task-specific routing, docs/method.md#routing-sources-the-routing-ablation;
# ``mixlora.data.definitions``): one or two sentences per training task and per held-out set, in the style of
# Vision-Flan's definitions table (what the image shows, what to do, the answer format). Keys: training task names,
# then the EVAL_INFO keys (an evaluation looks up "<task>/<group>", e.g. "mme/existence", then "<task>", e.g. "pope").
TASK_DEFINITIONS: dict[str, str] = {
    "SynthShapes+color_classification": "You are given an image with a single shape. Choose the color of the shape "
    "from the given options and answer with the option letter and the color, for example '(b) red'.",
    "SynthShapes+color_name": "You are given an image with a single shape. Name the color of the shape with one "
    "word, such as 'red'.",
    "SynthShapes+color_verification": "You are given an image with a single shape and asked about a color. Decide "
    "whether the shape has that color and answer 'Yes' or 'No'.",
    "SynthShapes+shape_classification": "You are given an image with a single object. Choose its shape from the "
    "given options and answer with the option letter and the shape, for example '(c) triangle'.",
    "SynthShapes+shape_verification": "You are given an image with a single object and asked about a shape. Decide "
    "whether the object has that shape and answer 'yes' or 'no' in lower case.",
    "SynthShapes+size_classification": "You are given an image with a single shape. Say whether the shape is small, "
    "medium or large compared with the image, answering with one of these words.",
    "SynthShapes+object_description": "You are given an image with a single shape. Describe it in a short phrase "
    "giving its size, color and shape, for example 'a small red triangle'.",
    "SynthCount+count_digits": "You are given an image with several shapes. Count all the shapes and answer with "
    "the number in digits, for example '4'.",
    "SynthCount+count_words": "You are given an image with several shapes. Count all the shapes and write the "
    "number as an English word, for example 'four'.",
    "SynthCount+count_options": "You are given an image with several shapes. Count them and choose the correct "
    "number from the given options, answering with the option letter and the number, for example '(c) 4'.",
    "SynthCount+count_by_shape": "You are given an image with shapes of different kinds and a kind to look for. "
    "Count only the shapes of that kind and answer in digits, with 0 when there are none.",
    "SynthSpatial+position_classification": "You are given an image with a single shape. Choose where it lies "
    "(left, right, top, bottom or center) from the given options, answering with the option letter and the "
    "position.",
    "SynthSpatial+position_name": "You are given an image with a single shape. Name the part of the image that "
    "holds it with one word: left, right, top, bottom or center.",
    "SynthSpatial+relation_sentence": "You are given an image with two shapes. Write one sentence saying where the "
    "first named shape is relative to the second, for example 'The red circle is to the left of the blue star.'",
    "SynthSpatial+relation_which": "You are given an image with two shapes and a direction. Tell which of the two "
    "named shapes lies in that direction, answering with a short phrase such as 'the red circle'.",
    "SynthSpatial+distance_judgement": "You are given an image with two shapes. Judge whether they are close "
    "together or far apart and answer 'close' or 'far'.",
    "SynthDepth+occlusion_front": "You are given an image in which one shape partly covers another. Choose the "
    "shape in front, nearer to the viewer, from the given options and answer with the option letter and the shape.",
    "SynthCompare+size_comparison": "You are given an image with two shapes. Tell which of the two named shapes is "
    "bigger, answering with a short phrase such as 'the blue square'.",
    "SynthGlyphs+character_reading": "You are given an image showing one letter or digit. Read it and answer with "
    "that single character.",
    "SynthGlyphs+word_transcription": "You are given an image with a short word written in it. Transcribe the word "
    "exactly and answer with the word alone.",
    "SynthGlyphs+text_color": "You are given an image with some writing. Choose the color of the writing from the "
    "given options and answer with the option letter and the color.",
    "SynthGlyphs+arithmetic": "You are given an image with a written sum or difference of small numbers. Compute the "
    "result and answer with it in digits.",
    "SynthScenes+background_classification": "You are given an image of a scene, possibly with some shapes in it. "
    "Choose the kind of background from the given options and answer with the option letter and the scene.",
    "SynthScenes+scene_name": "You are given an image of a scene. Name the kind of background with a single word, "
    "such as 'snow' or 'grass'.",
    "SynthObjects+object_listing": "You are given an image with several shapes. List the shapes from left to right, "
    "separated by commas, for example 'circle, square, star'.",
    "SynthCaptions+image_captioning": "You are given an image with shapes on a background. Write one sentence that "
    "describes the shapes and the background, for example 'A large red circle on grass.'",
    "SynthCaptions+caption_matching": "You are given an image and a caption. Decide whether the caption correctly "
    "describes the image and answer 'yes' or 'no' in lower case.",
    "SynthCaptions+question_answerability": "You are given an image and a question about it. Decide whether the "
    "question can be answered by looking at the image and answer 'Yes' or 'No'.",
    "mme/existence": "You are given an image with several shapes and asked whether a shape of a given color and "
    "kind is in it. Answer yes or no.",
    "mme/count": "You are given an image with shapes and a question stating how many shapes of one kind it holds. "
    "Decide whether that number is right and answer yes or no.",
    "mme/position": "You are given an image with two shapes and a question stating where one lies relative to the "
    "other. Decide whether the statement is right and answer yes or no.",
    "mme/color": "You are given an image with several shapes and a question about the color of one named shape. "
    "Answer yes or no.",
    "mme/OCR": "You are given an image with a word written on a plate and a question quoting a word. Decide whether "
    "the quoted word is the one written and answer yes or no.",
    "mme/numerical_calculation": "You are given an image with a written arithmetic question and a proposed result. "
    "Decide whether the result is correct and answer yes or no.",
    "mme/scene": "You are given an image of a scene and a question naming a kind of scene. Decide whether the image "
    "shows that kind of scene and answer yes or no.",
    "cvbench/Count": "You are given an image with several small shapes and a kind of shape. Count the shapes of that "
    "kind and answer with the letter of the matching choice.",
    "cvbench/Relation": "You are given an image with two named shapes. Choose where the first lies with respect to "
    "the second and answer with the letter of the matching choice.",
    "cvbench/Depth": "You are given a picture of shapes in a room. Choose which named shape is closer to the camera "
    "and answer with the letter of the matching choice.",
    "cvbench/Distance": "You are given a picture of three shapes in a room. Choose which of two named shapes is "
    "closer to the reference shape and answer with the letter of the matching choice.",
    "cifar10": "You are given an image of a single object. Choose the kind of object from the given options.",
    "cifar100": "You are given an image of a single object. Name the object by its color and shape, for example "
    "'red circle'.",
    "mnist": "You are given an image of a handwritten digit. Answer with the digit.",
    "pope": "You are given an image with several shapes and asked whether a shape of a given kind is in it. Answer "
    "yes or no.",
    "vsr": "You are given an image with two shapes and a statement about where one lies relative to the other. "
    "Decide whether the statement is true or false.",
    "snli_ve": "You are given an image as a premise and a sentence as a hypothesis. Decide whether the image entails "
    "the hypothesis, contradicts it, or neither: entailment, contradiction or neutral.",
    "textvqa": "You are given an image with words written on signs and a question about them. Answer with the word "
    "that the question asks for.",
}


def task_definitions() -> dict[str, str]:
    """{key: definition} for every training task (``task_name``) and every held-out set (the EVAL_INFO keys), in
    that order; independent of the seed and the sizes."""
    keys = [t.name for t in TRAIN_TASKS] + list(EVAL_INFO)
    missing = [k for k in keys if k not in TASK_DEFINITIONS]
    extra = [k for k in TASK_DEFINITIONS if k not in keys]
    if missing or extra:  # a task added without a definition (or a stale one) must not ship silently
        raise RuntimeError(f"TASK_DEFINITIONS is out of date: missing {missing}, unknown {extra}")
    return {k: TASK_DEFINITIONS[k] for k in keys}


def write_task_definitions(out: str | Path) -> dict:
    """Write ``DIR/task_definitions.json`` (see :func:`task_definitions`); returns its manifest entry."""
    from mixlora.data.definitions import DEFINITIONS_FILE

    table = task_definitions()
    _write_json(Path(out) / DEFINITIONS_FILE, table)
    return {"path": DEFINITIONS_FILE, "training_tasks": len(TRAIN_TASKS), "eval_keys": len(table) - len(TRAIN_TASKS)}


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


def _similar_word(rng, word: str) -> str:
    shared = [w for w in WORDS if w != word and (w[0] == word[0] or w[1:] == word[1:] or w[-1] == word[-1])]
    return rng.choice(shared or [w for w in WORDS if w != word])


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


# --------------------------------------------------------------------------------------------------------------
# Writers.
# --------------------------------------------------------------------------------------------------------------


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _rng(seed: int, component: str) -> random.Random:
    # String seeds are hashed with SHA-512 by random.Random, so streams do not depend on PYTHONHASHSEED.
    return random.Random(f"{seed}/{component}")


def write_training(out: Path, seed: int, size: int, per_task: int, bar) -> tuple[list[dict], dict]:
    """Write ``train.json`` and its images; returns (records, per-task manifest entries)."""
    records, info = [], {}
    for task in TRAIN_TASKS:
        rng = _rng(seed, task.name)
        order: list[int] = []
        for n in range(per_task):
            if not order:  # cycle through the phrasings in shuffled rounds, so every phrasing is used
                order = list(range(len(task.phrasings)))
                rng.shuffle(order)
            sample = task.sample(rng, size)
            instruction = task.phrasings[order.pop()].format(**sample.fields)
            image = f"{task.name}/{n:05d}.png"
            _save(render(sample.scene), out / "images" / image)
            records.append({
                # Like Vision-Flan, ids repeat within a task: key records by (task_name, image).
                "id": f"synth_{task.name}+{rng.randrange(max(1, per_task // 3))}",
                "image": image,
                "task_name": task.name,
                "conversations": [
                    {"from": "human", "value": vision_flan_human_turn(instruction, sample.options)},
                    {"from": "gpt", "value": sample.answer},
                ],
            })
            bar.update(1)
        info[task.name] = {"records": per_task, "images": per_task, "phrasings": len(task.phrasings),
                           "answer_style": task.answer_style, "teaches": task.teaches}
    _write_json(out / "train.json", records)
    return records, info


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


# --------------------------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------------------------

_OUTPUTS = ("train.json", "stage1.json", "task_definitions.json", "manifest.json", "images", "eval")
SIMPLE_SETS = ("cifar10", "cifar100", "mnist", "vsr", "snli_ve", "textvqa")


def _check_int(name: str, value, lo: int, hi: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is out of range: it must be an integer in [{lo}, {hi}] ({hint}).")
    return value


def generate_suite(out_dir: str | Path, seed: int = 0, image_size: int = 64, per_task: int = 150,
                   eval_per_task: int = 150, mme_images: int = 30, stage1_size: int = 2000, seen_per_task: int = 30,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the whole suite under ``out_dir`` and return the manifest (also written to manifest.json).

    Args:
        out_dir: output folder; it must be empty or absent unless ``overwrite``, which deletes only the suite's own
            outputs (train.json, stage1.json, task_definitions.json, manifest.json, images/, eval/).
        seed: seed of every random stream; the same arguments give byte-identical files.
        image_size: side of the square images in pixels (48-512).
        per_task: training records (and images) per training task.
        eval_per_task: records per held-out set (cifar10, cifar100, mnist, vsr, snli_ve, textvqa), per CV-Bench
            task and per POPE split (POPE uses eval_per_task // 6 images with 6 questions each).
        mme_images: images per MME subtask (two questions each).
        stage1_size: alignment records in stage1.json.
        seen_per_task: held-out instances per training task in eval/seen (``mixlora.data.seen``; Table 2's analogue).
        progress: show a tqdm bar.
    """
    _check_int("image_size", image_size, 48, 512, "64 matches the tiny model: patch 8 -> 64 image tokens")
    _check_int("per_task", per_task, 1, 100_000, "training records per task")
    _check_int("eval_per_task", eval_per_task, 6, 100_000, "POPE needs at least 6 questions per split")
    _check_int("mme_images", mme_images, 1, 10_000, "images per MME subtask")
    _check_int("stage1_size", stage1_size, 0, 1_000_000, "alignment records")
    _check_int("seen_per_task", seen_per_task, 1, 100_000, "held-out instances per training task")
    _check_int("seed", seed, 0, 2**63 - 1, "any non-negative integer")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; pass another --out.")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass --overwrite (deletes {', '.join(_OUTPUTS)} there) "
                                  "or choose an empty --out folder.")
        for name in _OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)

    pope_images = eval_per_task // 6
    total = (len(TRAIN_TASKS) * per_task + stage1_size + len(MME_SUBTASKS) * mme_images
             + len(CVBENCH_TASKS) * eval_per_task + len(SIMPLE_SETS) * eval_per_task + pope_images)
    with tqdm(total=total, desc="synthetic suite", unit="img", disable=not progress) as bar:
        _, train_info = write_training(out, seed, image_size, per_task, bar)
        stage1 = write_stage1(out, seed, image_size, stage1_size, bar)
        eval_info = {"mme": {"path": "eval/mme", "metric": EVAL_INFO["mme/existence"].metric,
                             "subtasks": write_mme(out, seed, image_size, mme_images, bar)},
                     "cvbench": {"path": "eval/cvbench/test.jsonl", "metric": EVAL_INFO["cvbench/Count"].metric,
                                 "tasks": write_cvbench(out, seed, image_size, eval_per_task, bar)}}
        for name in SIMPLE_SETS:
            eval_info[name] = write_simple_set(out, seed, image_size, name, eval_per_task, bar)
        eval_info["pope"] = write_pope(out, seed, image_size, pope_images, bar)
    from mixlora.data.seen import write_seen  # imports this module: a top-level import would be circular

    eval_info["seen"] = write_seen(out, seed, image_size, seen_per_task, progress=progress)
    definitions = write_task_definitions(out)
    manifest = {
        "generator": "mixlora.data.synthetic",
        "seed": seed,
        "image_size": image_size,
        "train": {"path": "train.json", "image_root": "images", "records": len(TRAIN_TASKS) * per_task,
                  "tasks": train_info},
        "stage1": {"path": "stage1.json", "image_root": "images", "records": len(stage1), "images": len(stage1)},
        "eval": eval_info,
        "task_definitions": definitions,
    }
    _write_json(out / "manifest.json", manifest)
    return manifest
