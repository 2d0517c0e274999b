"""Random generator state of a training process: seeding, and the states a checkpoint saves and restores.

A checkpoint holds ``rng/rank<r>.pt`` per rank (mixlora.train.state's layout): the Python, numpy, torch (and CUDA)
generator states, stored in types ``torch.load(weights_only=True)`` accepts, so loading one runs no code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .settings import ConfigError

RNG_DIR = "rng"  # in a checkpoint folder: rank<r>.pt per rank


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states, in types ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_rng(checkpoint: Path, rank: int) -> dict:
    path = Path(checkpoint) / RNG_DIR / f"rank{rank}.pt"
    if not path.is_file():
        raise ConfigError(f"{checkpoint} has no RNG state for rank {rank} ({path} is missing): it was written with "
                          "another number of processes; resume with the same world size")
    return torch.load(path, weights_only=True)
