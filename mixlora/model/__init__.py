"""The LLaVA-style model stack: vision tower -> projector -> causal LLM (see docs/model.md)."""

from .llava import LlavaMixModel, build_llava, positions_from_mask
from .llm import build_llm, resolve_dtype
from .projector import PROJECTOR_KINDS, build_projector, load_llava_projector, load_projector_state
from .tiny import build_tiny_llava, tiny_clip_vision_config, tiny_llm_config, tiny_open_clip_config
from .vision import (
    CLIP_MEAN,
    CLIP_STD,
    VISION_BACKENDS,
    HFCLIPVisionTower,
    OpenClipVisionTower,
    build_vision_tower,
    register_open_clip_config,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HFCLIPVisionTower",
    "LlavaMixModel",
    "OpenClipVisionTower",
    "PROJECTOR_KINDS",
    "VISION_BACKENDS",
    "build_llava",
    "build_llm",
    "build_projector",
    "build_tiny_llava",
    "build_vision_tower",
    "load_llava_projector",
    "load_projector_state",
    "positions_from_mask",
    "register_open_clip_config",
    "resolve_dtype",
    "tiny_clip_vision_config",
    "tiny_llm_config",
    "tiny_open_clip_config",
]
