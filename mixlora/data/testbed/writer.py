"""Writing the testbed's files: atomic JSON / JSON Lines, PNGs, and the bookkeeping of the generator's outputs.

Text files are written to a temporary file in the same folder and moved into place with ``os.replace`` (atomic
on one file system), so a reader never sees half a file and a killed build leaves no ``manifest.json``.
JSON is written with one fixed formatting (``indent=1``, UTF-8, trailing newline), so the same records always
give the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from PIL import Image

MANIFEST = "manifest.json"
# Everything the generator writes into its folder; overwrite removes these and nothing else.
OUTPUT_DIRS: tuple[str, ...] = ("images", "eval")
OUTPUT_FILES: tuple[str, ...] = ("stage1.json", "train.json", MANIFEST)
_TMP_SUFFIX = ".tmp"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        # Leave no stray temporary behind, then let the original error through.
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON (a list of records, or the manifest)."""
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def save_png(image: Image.Image, path: Path) -> None:
    """Save ``image`` as PNG (PIL adds no timestamp, so equal pixels give equal bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of a complete build in ``out_dir``, or None if there is none."""
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def existing_outputs(out_dir: Path) -> list[Path]:
    """The generator's outputs present in ``out_dir``, including temporaries left by a killed build."""
    found = [out_dir / name for name in OUTPUT_DIRS + OUTPUT_FILES if (out_dir / name).exists()]
    found += sorted(p for name in OUTPUT_FILES for p in out_dir.glob(f".{name}.*{_TMP_SUFFIX}"))
    return found


def remove_outputs(out_dir: Path) -> None:
    """Delete the generator's outputs from ``out_dir``; any other file there is kept."""
    # The manifest goes first: if removal is interrupted, the folder is no longer marked complete.
    manifest = out_dir / MANIFEST
    manifest.unlink(missing_ok=True)
    for path in existing_outputs(out_dir):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
