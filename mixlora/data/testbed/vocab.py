"""The testbed's closed world: background, palette, sizes, positions and the answer mappings of each family.

Everything the pixel reader (:func:`mixlora.data.testbed.render.read_attributes`) may rely on is defined here:
the background colour, the palette and the size thresholds. Nothing else about the generator is needed to read
an image back.

Geometry (``S`` = image size in pixels, even, 32 <= S <= 512; 64 by default):

* The object's *radius* is half its side (square) or half its diameter (disc). Its pixels span
  ``[cx - r, cx + r)`` in x and ``[cy - r, cy + r)`` in y, so its bounding box is ``2r`` x ``2r``.
* Radii at ``S = 64`` are :data:`SIZE_RADII_64`; other sizes scale them by ``S / 64`` (rounded half up).
* Size thresholds (:func:`size_thresholds`) lie halfway between neighbouring classes' radius ranges,
  e.g. 6.5 and 10.5 px at ``S = 64``; a reader compares half the bounding box's larger side to them.
* Position is the quadrant of the image (split at ``S / 2``) holding the bounding box's centre; the generator
  keeps the whole object inside that quadrant with a margin of :data:`QUADRANT_MARGIN` px.
"""

from __future__ import annotations

TASK_PREFIX = "testbed"  # task_name = "testbed+<family>_<kind>", Vision-Flan's "dataset+task" style
VERSION = "testbed-2"  # bump whenever the same arguments would produce different files

BACKGROUND: tuple[int, int, int] = (90, 90, 90)

# Four colours far apart in RGB and all far from the grey background, so a 64x64 image leaves no doubt.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SIZES: tuple[str, ...] = ("small", "medium", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
SHAPES: tuple[str, ...] = ("square", "disc")  # nuisance variation: never asked about

# Radius ranges (inclusive, px) at S = 64. The gaps between classes (5 -> 8, 9 -> 12) keep every class apart by
# at least 6 px of side, and the largest object (26 px) still fits a 32 px quadrant with margins and jitter.
SIZE_RADII_64: dict[str, tuple[int, int]] = {"small": (4, 5), "medium": (8, 9), "large": (12, 13)}
QUADRANT_MARGIN = 1
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 512

FAMILIES: tuple[str, ...] = ("colour", "size", "position")
VALUES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "size": SIZES, "position": POSITIONS}

# ``{family}_next``: the value after the object's one in this cycle (the last wraps to the first).
CYCLES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow"),
    "size": ("small", "medium", "large"),
    "position": ("top left", "top right", "bottom right", "bottom left"),  # clockwise
}

# ``{family}_flip``: the opposite value (each mapping is its own inverse).
FLIPS: dict[str, dict[str, str]] = {
    "colour": {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green"},
    "size": {"small": "large", "large": "small", "medium": "medium"},
    "position": {"top left": "top right", "top right": "top left",
                 "bottom left": "bottom right", "bottom right": "bottom left"},  # mirrored left-right
}


def next_value(family: str, value: str) -> str:
    """The value after ``value`` in :data:`CYCLES` ``[family]``, wrapping around."""
    cycle = CYCLES[family]
    return cycle[(cycle.index(value) + 1) % len(cycle)]


def cycle_text(family: str) -> str:
    """The cycle as instructions state it, e.g. ``"red, green, blue, yellow"``."""
    return ", ".join(CYCLES[family])


def check_image_size(image_size) -> int:
    """``image_size`` if the testbed can be drawn at it, else ValueError saying why."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image_size must be an integer, got {image_size!r}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE or image_size % 2:
        raise ValueError(f"image_size must be an even number of pixels from {MIN_IMAGE_SIZE} to "
                         f"{MAX_IMAGE_SIZE}, got {image_size}")
    return image_size


def size_radii(image_size: int) -> dict[str, tuple[int, int]]:
    """Radius range (inclusive, px) of each size class at ``image_size``: :data:`SIZE_RADII_64` scaled."""
    check_image_size(image_size)
    # int(x + 0.5) rounds half up; round() would round half to even and could merge neighbouring classes.
    return {size: (int(lo * image_size / 64 + 0.5), int(hi * image_size / 64 + 0.5))
            for size, (lo, hi) in SIZE_RADII_64.items()}


def size_thresholds(image_size: int) -> tuple[float, float]:
    """Radii (px) separating small/medium and medium/large: halfway between the classes' ranges."""
    radii = size_radii(image_size)
    return ((radii["small"][1] + radii["medium"][0]) / 2, (radii["medium"][1] + radii["large"][0]) / 2)
