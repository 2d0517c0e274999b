"""Rendering: a :class:`Scene` is a background plus drawable items, rendered in order (later items occlude earlier
ones) to an RGB image of ``size`` x ``size`` pixels, without anti-aliasing (each object is one exact RGB value of
:data:`~.vocab.COLORS`)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .vocab import _TEXTURED, BACKGROUNDS, COLORS, PLAIN_BACKGROUNDS, SHAPES


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
