"""The vision-to-language projector and the loader for LLaVA's ``mm_projector.bin``.

Kinds (LLaVA's ``mm_projector_type``):

- ``linear``: one ``nn.Linear(d_vision, d_llm)`` (LLaVA v1 and the MixLoRA paper: 1024 -> 4096).
- ``mlp2x_gelu``: ``nn.Sequential(Linear(d_vision, d_llm), GELU(), Linear(d_llm, d_llm))`` (LLaVA-1.5).

Both map patch features [B, N, d_vision] -> [B, N, d_llm]. The modules are plain ``nn.Linear`` /
``nn.Sequential`` so that their state-dict keys are exactly LLaVA's with the ``model.mm_projector.`` prefix
removed (``weight``/``bias`` for linear; ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias`` for mlp2x_gelu).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn

PROJECTOR_KINDS = ("linear", "mlp2x_gelu")
LLAVA_PREFIX = "mm_projector."  # LLaVA saves e.g. "model.mm_projector.0.weight"


def build_projector(kind: str, vision_hidden_size: int, llm_hidden_size: int) -> nn.Module:
    """A fresh projector of ``kind`` (one of ``PROJECTOR_KINDS``) from d_vision to d_llm (PyTorch default init)."""
    if kind not in PROJECTOR_KINDS:
        raise ValueError(f"projector kind {kind!r} is not supported; choose one of {', '.join(PROJECTOR_KINDS)}")
    if kind == "linear":
        return nn.Linear(vision_hidden_size, llm_hidden_size)
    return nn.Sequential(
        nn.Linear(vision_hidden_size, llm_hidden_size), nn.GELU(), nn.Linear(llm_hidden_size, llm_hidden_size)
    )


def projector_dims(projector: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a projector: in_features of its first Linear, out_features of its last."""
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"a projector needs at least one nn.Linear, got {type(projector).__name__}")
    return linears[0].in_features, linears[-1].out_features


def load_projector_state(projector: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy ``state`` (keys as in ``projector.state_dict()``) into ``projector`` after checking keys and shapes.

    Values are cast to each parameter's dtype (LLaVA saves fp16). Raises ValueError naming every missing,
    unexpected or mis-shaped key, and ``source`` (e.g. the file path), instead of loading partially.
    """
    expected = projector.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs projector {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if wrong_shape:
            problems.append("shape mismatch " + "; ".join(wrong_shape))
        raise ValueError(
            f"projector weights from {source} do not fit this projector ({', '.join(problems)}). Check that the "
            "projector kind (linear vs mlp2x_gelu) and the vision/LLM hidden sizes match the checkpoint."
        )
    with torch.no_grad():
        for k, target in expected.items():
            target.copy_(state[k].to(dtype=target.dtype, device=target.device))


def load_llava_projector(projector: nn.Module, path: Union[str, Path]) -> nn.Module:
    """Load a LLaVA ``mm_projector.bin`` (a torch-saved dict) into ``projector`` in place; return it.

    Keys are ``<anything>mm_projector.<param>``, e.g. ``model.mm_projector.weight`` (linear) or
    ``model.mm_projector.0.weight`` ... ``model.mm_projector.2.bias`` (mlp2x_gelu); the part after
    ``mm_projector.`` must match ``projector.state_dict()``. Keys without ``mm_projector.`` are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector checkpoint {path} does not exist (expected LLaVA's mm_projector.bin)")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} holds a {type(raw).__name__}, expected a dict of tensors like LLaVA's mm_projector.bin")
    state: dict[str, torch.Tensor] = {}
    foreign = []
    for key, value in raw.items():
        head, sep, tail = key.partition(LLAVA_PREFIX)
        if not sep:
            foreign.append(key)
            continue
        state[tail] = value
    if foreign:
        raise ValueError(
            f"{path}: keys {sorted(foreign)[:5]} do not contain 'mm_projector.'; expected LLaVA's layout such as "
            "'model.mm_projector.weight' or 'model.mm_projector.0.weight'"
        )
    load_projector_state(projector, state, source=str(path))
    return projector
