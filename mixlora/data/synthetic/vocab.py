"""Vocabulary of the synthetic suite: colours, shapes, sizes, positions, backgrounds, words and glyphs.

Kept small on purpose: the tiny model's BPE (~1k tokens) is trained on this corpus. Every RGB value here is drawn
exactly (no anti-aliasing, :mod:`.rendering`), so tests can identify objects by their pixels.
"""

from __future__ import annotations


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
