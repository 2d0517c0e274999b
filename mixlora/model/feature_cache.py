"""A disk cache of the frozen vision tower's outputs, shared by runs, seeds and evaluations.

The tower is frozen, so its output for an image never changes while the tower and the preprocessing stay the
same; recomputing it every epoch (and again in every run that starts from the same tower) is wasted work. The
cache stores ``tower(pixels)`` [N, D] per image and returns the stored tensor on later requests.

Keys (what invalidates an entry):

* **the tower**: a SHA-256 over the tower's class, its module structure (``repr``), its plain configuration
  attributes (image size, patch count, chosen feature layer, ...) and every tensor of its ``state_dict`` (name,
  dtype, shape, bytes), plus the compute mode (parameter dtype, autocast dtype or none). Each digest is one folder
  ``ROOT/<digest>/``; a changed tower reads another folder, so stale features are never returned.
* **the image**: a BLAKE2b digest of the preprocessed pixel tensor (shape, dtype and bytes). This is keyed by
  what the tower sees: an edited image file, a different resize mode or normalisation all change the pixels and
  so the key; the same file read twice gives the same key.

Values are what the tower returned the first time (as a batch of the images missing at that call), stored in the
tower's output dtype: a cached request is bit-identical to that first computation. (Recomputing an image in a
different batch may differ from it in the last bits, as BLAS results depend on the batch shape; the cache does
not recompute.)

Storage: new entries accumulate in memory and are written by :meth:`FeatureCache.flush` (also every
``flush_every`` new entries) as one safetensors shard, written to a temporary name and renamed, so a killed run
leaves complete shards only (it loses at most its unflushed entries, which the next run recomputes). Shards load
with safetensors (tensors only: nothing in the cache can execute code). Ranks and concurrent runs write distinct
shard names; an image stored twice holds the same value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

_CONFIG_TYPES = (bool, int, float, str, tuple)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tower_digest(tower: nn.Module) -> str:
    """Hex SHA-256 identifying what ``tower`` computes (class, structure, configuration, weights)."""
    h = hashlib.sha256()
    h.update(f"{type(tower).__module__}.{type(tower).__qualname__}\n{tower!r}\n".encode())
    config = {k: v for k, v in vars(tower).items() if not k.startswith("__") and isinstance(v, _CONFIG_TYPES)}
    h.update(repr(sorted(config.items())).encode())
    for name, tensor in sorted(tower.state_dict().items()):
        h.update(f"\n{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()


def image_key(pixels: torch.Tensor) -> str:
    """Hex BLAKE2b of one preprocessed image [3, S, S] (shape, dtype, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(pixels.shape)}:{pixels.dtype}:".encode())
    h.update(_tensor_bytes(pixels))
    return h.hexdigest()


def _compute_mode(tower: nn.Module, device: torch.device) -> str:
    dtype = next(tower.parameters()).dtype
    autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    return f"{str(dtype).removeprefix('torch.')}-autocast-{str(autocast).removeprefix('torch.') if autocast else 'off'}"


class FeatureCache:
    """Cached ``tower(pixel_values)`` for a frozen tower; see the module docstring.

    Args:
        root: the cache folder (created); entries live in ``root/<tower digest>-<compute mode>/``.
        tower: the frozen vision tower ([B, 3, S, S] -> [B, N, D]); its parameters must not require gradients.
        flush_every: write a shard once this many new entries are held in memory.
    """

    def __init__(self, root: Union[str, Path], tower: nn.Module, flush_every: int = 4096):
        if any(p.requires_grad for p in tower.parameters()):
            raise ValueError("a feature cache needs a frozen vision tower (its output must not change in training); "
                             "this tower has trainable parameters")
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.root = Path(root)
        self.tower = tower
        self.flush_every = int(flush_every)
        self.digest = tower_digest(tower)
        self._tables: dict[str, dict[str, torch.Tensor]] = {}
        self._pending: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def folder(self, mode: str) -> Path:
        return self.root / f"{self.digest[:32]}-{mode}"

    def _table(self, mode: str) -> dict[str, torch.Tensor]:
        if mode not in self._tables:
            from safetensors.torch import load_file

            table: dict[str, torch.Tensor] = {}
            folder = self.folder(mode)
            for shard in sorted(folder.glob("shard-*.safetensors")) if folder.is_dir() else ():
                table.update(load_file(str(shard)))
            if table:
                logger.info("feature cache: %d stored images in %s", len(table), folder)
            self._tables[mode] = table
            self._pending[mode] = {}
        return self._tables[mode]

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, N, D] on ``pixel_values``' device: stored rows where present, the tower for the
        rest (computed as one batch of the missing images, then stored)."""
        device = pixel_values.device
        mode = _compute_mode(self.tower, device)
        table = self._table(mode)
        cpu_pixels = pixel_values.detach().cpu()
        keys = [image_key(p) for p in cpu_pixels]
        missing = [k for k in dict.fromkeys(keys) if k not in table]  # each missing image once, in batch order
        if missing:
            computed = self.tower(pixel_values[[keys.index(k) for k in missing]])
            for key, feature in zip(missing, computed):
                table[key] = self._pending[mode][key] = feature.detach().cpu().clone()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        out = torch.stack([table[k] for k in keys]).to(device)
        if sum(len(p) for p in self._pending.values()) >= self.flush_every:
            self.flush()
        return out

    def flush(self) -> Optional[Path]:
        """Write the entries added since the last flush as one shard (atomic rename); returns the last shard."""
        from safetensors.torch import save_file

        written = None
        for mode, pending in self._pending.items():
            if not pending:
                continue
            folder = self.folder(mode)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"shard-{os.getpid()}-{uuid.uuid4().hex[:12]}.safetensors"
            tmp = folder / f".{name}.tmp"
            save_file({k: v.contiguous() for k, v in pending.items()}, str(tmp))
            os.replace(tmp, folder / name)
            logger.info("feature cache: wrote %d images to %s", len(pending), folder / name)
            pending.clear()
            written = folder / name
        return written
