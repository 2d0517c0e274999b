"""Scenes (one object on a grey background), their drawing, and the pixel reader that recovers the attributes.

A :class:`Scene` fixes everything about an image: colour, size class, quadrant, shape, radius and centre.
:func:`sample_scene` draws one from a ``random.Random`` stream; :func:`render` draws it as an RGB image without
anti-aliasing (one exact palette RGB on the :data:`~mixlora.data.testbed.vocab.BACKGROUND` grey);
:func:`read_attributes` reads colour, size and position back from the pixels alone, using only the background,
palette and size thresholds of :mod:`mixlora.data.testbed.vocab`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw

from mixlora.data.testbed.vocab import (
    BACKGROUND,
    COLOURS,
    PALETTE,
    POSITIONS,
    QUADRANT_MARGIN,
    SHAPES,
    SIZES,
    size_radii,
    size_thresholds,
)


@dataclass(frozen=True)
class Scene:
    """One image. The object's pixels span ``[cx - radius, cx + radius)`` in x and the same around ``cy`` in y."""

    colour: str
    size: str
    position: str
    shape: str
    radius: int
    cx: int
    cy: int

    @property
    def attributes(self) -> dict[str, str]:
        """The queried attributes: ``{"colour": ..., "size": ..., "position": ...}``."""
        return {"colour": self.colour, "size": self.size, "position": self.position}

    @property
    def key(self) -> tuple:
        """Identifies the rendered pixels (two scenes with equal keys give identical images)."""
        return (self.colour, self.shape, self.radius, self.cx, self.cy)


def quadrant_box(position: str, image_size: int) -> tuple[int, int, int, int]:
    """The quadrant's pixel box ``(x0, y0, x1, y1)``, right/bottom exclusive."""
    half = image_size // 2
    x0 = half if position.endswith("right") else 0
    y0 = half if position.startswith("bottom") else 0
    return x0, y0, x0 + half, y0 + half


def centre_range(lo: int, hi: int, radius: int) -> tuple[int, int]:
    """Inclusive range of centres keeping ``[c - radius, c + radius)`` inside ``[lo, hi)`` with the margin."""
    return lo + QUADRANT_MARGIN + radius, hi - QUADRANT_MARGIN - radius


def sample_scene(rng: random.Random, image_size: int, colour: str | None = None, size: str | None = None,
                 position: str | None = None, shape: str | None = None) -> Scene:
    """A scene with the given attributes, the others drawn uniformly (each from a fixed tuple, in a fixed order
    of draws, so one stream always yields the same scenes); radius and centre are drawn last."""
    colour = colour if colour is not None else rng.choice(COLOURS)
    size = size if size is not None else rng.choice(SIZES)
    position = position if position is not None else rng.choice(POSITIONS)
    shape = shape if shape is not None else rng.choice(SHAPES)
    return place(rng, image_size, colour, size, position, shape)


def place(rng: random.Random, image_size: int, colour: str, size: str, position: str, shape: str) -> Scene:
    """Draw the radius (within the size class) and the centre (anywhere the object stays inside its quadrant)."""
    if colour not in PALETTE or size not in SIZES or position not in POSITIONS or shape not in SHAPES:
        raise ValueError(f"unknown attribute in {(colour, size, position, shape)!r}; colours {COLOURS}, sizes "
                         f"{SIZES}, positions {POSITIONS}, shapes {SHAPES}")
    lo, hi = size_radii(image_size)[size]
    radius = rng.randint(lo, hi)
    x0, y0, x1, y1 = quadrant_box(position, image_size)
    cx = rng.randint(*centre_range(x0, x1, radius))
    cy = rng.randint(*centre_range(y0, y1, radius))
    return Scene(colour, size, position, shape, radius, cx, cy)


def render(scene: Scene, image_size: int = 64) -> Image.Image:
    """The scene as an ``image_size`` x ``image_size`` RGB image: background grey plus one filled object."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    # PIL boxes are inclusive on both ends, hence the -1: the object covers exactly 2r x 2r pixels.
    box = (scene.cx - scene.radius, scene.cy - scene.radius, scene.cx + scene.radius - 1, scene.cy + scene.radius - 1)
    fill = PALETTE[scene.colour]
    if scene.shape == "square":
        draw.rectangle(box, fill=fill)
    elif scene.shape == "disc":
        draw.ellipse(box, fill=fill)  # ImageDraw does not anti-alias: every object pixel is exactly `fill`
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; expected one of {SHAPES}")
    return image


def read_attributes(image: Image.Image) -> dict[str, str]:
    """``{"colour", "size", "position"}`` of the single object in ``image``, read from the pixels.

    Object pixels are those that differ from the background. Colour: the palette entry equal to their one RGB
    value. Size: half the larger side of their bounding box against :func:`size_thresholds` of the image's width.
    Position: the quadrant holding the bounding box's centre. ValueError if the image is not square, holds no
    object, or its object pixels are not one palette colour.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    if width != height:
        raise ValueError(f"expected a square image, got {width}x{height}")
    bbox = ImageChops.difference(rgb, Image.new("RGB", rgb.size, BACKGROUND)).getbbox()
    if bbox is None:
        raise ValueError("no object: every pixel is the background colour")
    # Count colours inside the bounding box only; the background there (disc corners) is dropped below.
    found = [colour for _, colour in rgb.crop(bbox).getcolors(maxcolors=width * height) if colour != BACKGROUND]
    if len(found) != 1:
        raise ValueError(f"expected the object to be one exact RGB colour, found {len(found)}: {found[:5]}")
    names = [name for name, value in PALETTE.items() if value == found[0]]
    if not names:
        raise ValueError(f"object colour {found[0]} is not in the palette {PALETTE}")
    x0, y0, x1, y1 = bbox
    half_side = max(x1 - x0, y1 - y0) / 2
    small_medium, medium_large = size_thresholds(width)
    size = "small" if half_side < small_medium else "medium" if half_side < medium_large else "large"
    # Pixel centres: the box covers columns x0 .. x1 - 1, so its centre is (x0 + x1 - 1) / 2.
    centre_x, centre_y = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    vertical = "top" if centre_y < width / 2 else "bottom"
    horizontal = "left" if centre_x < width / 2 else "right"
    return {"colour": names[0], "size": size, "position": f"{vertical} {horizontal}"}
