"""CLIP-style image preprocessing (the released code's pipeline), with LLaVA-1.5's optional pad-to-square.

``center_crop`` (released MixLoRA / LLaVA v1, HF ``CLIPImageProcessor``):
    1. resize so the shorter side is ``image_size`` (bicubic; the longer side is ``int(size * long / short)``),
    2. centre crop ``image_size x image_size`` (offsets ``(h - size) // 2``, ``(w - size) // 2``),
    3. scale to [0, 1] and normalise per channel: ``(x - mean) / std``.
``pad_to_square`` (LLaVA-1.5 ``image_aspect_ratio=pad``): first paste the image centred on a square canvas of
side ``max(w, h)`` filled with ``pad_color`` (default: the mean colour, ``int(255 * mean)`` per channel), then
the three steps above (the crop is then a no-op).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from mixlora.options import check_choice

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("center_crop", "pad_to_square")

# What PIL raises for unreadable, truncated or malicious files; callers catch these to report the image.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageProcessor:
    """Turn a PIL image into a normalised float tensor ``[3, image_size, image_size]``.

    Args:
        image_size: output side in pixels (224 for CLIP ViT-L/14-224, 336 for LLaVA-1.5).
        mean, std: per-channel normalisation constants (CLIP's by default).
        resize_mode: ``"center_crop"`` (released code) or ``"pad_to_square"`` (LLaVA-1.5 "pad").
        pad_color: RGB ints 0-255 for ``pad_to_square``; ``None`` means ``int(255 * mean)`` as in LLaVA.
    """

    def __init__(self, image_size: int = 224, mean=CLIP_MEAN, std=CLIP_STD, resize_mode: str = "center_crop",
                 pad_color=None):
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 channels with std > 0, got mean={mean}, std={std}")
        self.image_size = int(image_size)
        self.resize_mode = check_choice("resize_mode", resize_mode, RESIZE_MODES)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if pad_color is None:
            pad_color = tuple(int(m * 255) for m in self.mean)
        pad_color = tuple(int(c) for c in pad_color)
        if len(pad_color) != 3 or not all(0 <= c <= 255 for c in pad_color):
            raise ValueError(f"pad_color must be three ints in 0..255, got {pad_color}")
        self.pad_color = pad_color
        self._mean = torch.tensor(self.mean)  # float32 [3], broadcast over [H, W, 3]
        self._std = torch.tensor(self.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.resize_mode == "pad_to_square":
            image = _pad_to_square(image, self.pad_color)
        image = _resize_shortest_side(image, self.image_size)
        image = _center_crop(image, self.image_size)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # [H, W, 3]
        # Normalised channel-last, then transposed once: the same float32 operations in the same order as on a
        # [3, H, W] view, at a third of the time for small images (no strided arithmetic).
        return ((pixels - self._mean) / self._std).permute(2, 0, 1).contiguous()

    def load(self, path) -> torch.Tensor:
        """Open, fully decode and process an image file; raises one of ``IMAGE_ERRORS`` if it is unreadable."""
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not later inside a worker
            return self(image)

    def blank(self) -> torch.Tensor:
        """The all-zero image given to text-only samples (as the released code does)."""
        return torch.zeros(3, self.image_size, self.image_size)

    def __repr__(self):
        return (f"ImageProcessor(image_size={self.image_size}, resize_mode={self.resize_mode!r}, "
                f"mean={self.mean}, std={self.std}, pad_color={self.pad_color})")


class ImageMemo:
    """Processed images held in memory, so that data read for many epochs decodes each file once.

    ``load(path)`` returns what ``processor.load(path)`` returns (the same bits: the memo stores that result). The
    first results that fit in ``max_mb`` MiB are kept, keyed by the path, the file's modification time (ns) and its
    size, so a file rewritten during a run is read again; nothing is evicted. For data sampled uniformly (a
    shuffled epoch) any fixed set of kept images gives the same hit rate, budget / data size, so keeping the first
    ones costs no hits and no bookkeeping. Each process fills its own memo: with DataLoader workers the memory is up
    to ``max_mb`` per worker. ``load`` returns a copy, so a caller changing a tensor in place cannot alter the memo.

    Args:
        processor: the :class:`ImageProcessor` whose ``load`` fills the memo.
        max_mb: memory budget in MiB (> 0). A 64 px image takes 48 KiB (float32 [3, 64, 64]), a 224 px one 588 KiB.
    """

    def __init__(self, processor: ImageProcessor, max_mb: float):
        if not max_mb > 0:
            raise ValueError(f"max_mb must be > 0 MiB, got {max_mb!r}")
        self.processor = processor
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._table: dict[tuple, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._table)

    def load(self, path) -> torch.Tensor:
        """``processor.load(path)``, from memory when this file (unchanged) was loaded before."""
        stat = os.stat(path)  # FileNotFoundError (an OSError, so one of IMAGE_ERRORS) for a missing file
        key = (os.fspath(path), stat.st_mtime_ns, stat.st_size)
        kept = self._table.get(key)
        if kept is not None:
            self.hits += 1
            return kept.clone()
        self.misses += 1
        pixels = self.processor.load(path)
        size = pixels.element_size() * pixels.nelement()
        if self.bytes + size <= self.max_bytes:
            self._table[key] = pixels.clone()
            self.bytes += size
        return pixels


def _pad_to_square(image: Image.Image, color) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, resample=Image.Resampling.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    top, left = (height - size) // 2, (width - size) // 2
    return image.crop((left, top, left + size, top + size))
