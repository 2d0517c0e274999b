"""Writers of the suite's files (PNG, JSON, JSON Lines) and the seeded random stream of each component."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image


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
