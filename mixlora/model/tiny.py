"""A tiny random-weight LLaVA stack for CPU tests and smoke runs, built by the same builders as the real one.

Default shape: CLIP ViT (open_clip) width 64, 2 blocks, 64x64 images, patch 8 -> N = 64 image tokens;
Llama hidden 128, 2 layers, 4 heads, SwiGLU 384; vocabulary of ``vocab_size`` (~1k). Builds in well under a
second once transformers/open_clip are imported. Weights come from a fixed ``seed`` without touching the global
RNG, so two builds with the same arguments are identical.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .llava import LlavaMixModel, build_llava
from .llm import build_llm
from .vision import VISION_BACKENDS, HFCLIPVisionTower, OpenClipVisionTower

TINY_OPEN_CLIP_NAME = "mixlora-tiny-vit"


def tiny_open_clip_config(width: int = 64, layers: int = 2, image_size: int = 64, patch_size: int = 8) -> dict:
    """open_clip architecture dict: a small ViT image tower and a minimal text tower (dropped after build)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "head_width": 32,
                       "patch_size": patch_size, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1},
    }


def tiny_clip_vision_config(width: int = 64, layers: int = 2, image_size: int = 64, patch_size: int = 8) -> dict:
    """``CLIPVisionConfig`` kwargs for the same shape as ``tiny_open_clip_config``."""
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // 32), "image_size": image_size, "patch_size": patch_size}


def tiny_llm_config(
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: Optional[int] = None,
    pad_token_id: Optional[int] = None,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    max_position_embeddings: int = 1024,
) -> dict:
    """``build_llm(config=...)`` dict for a LLaMA-class model (RMSNorm, RoPE, SwiGLU, untied head)."""
    return {
        "model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 3 * hidden_size, "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads, "num_key_value_heads": num_heads,
        "max_position_embeddings": max_position_embeddings, "tie_word_embeddings": False,
        "pad_token_id": pad_token_id, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
    }


def build_tiny_llava(
    vocab_size: int,
    image_token_id: int,
    pad_token_id: Optional[int] = None,
    bos_token_id: Optional[int] = None,
    eos_token_id: Optional[int] = None,
    vision_backend: str = "open_clip",
    vision_width: int = 64,
    vision_layers: int = 2,
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: Optional[int] = None,
    projector: str = "linear",
    freeze_projector: bool = False,
    seed: int = 0,
) -> LlavaMixModel:
    """The tiny CPU stack; token ids come from the tokenizer (``len(tokenizer)``, ``<image>``, pad, bos, eos).

    ``vision_backend``: ``"open_clip"`` (default) or ``"hf_clip"``; both give N = (image_size / patch_size)^2.
    Returns an ``LlavaMixModel`` in eval mode (call ``.train()`` for training).
    """
    if vision_backend not in VISION_BACKENDS:
        raise ValueError(f"vision_backend {vision_backend!r} is not one of {', '.join(VISION_BACKENDS)}")
    with torch.random.fork_rng(devices=[]):  # deterministic weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        vision_kwargs: dict[str, Any] = dict(width=vision_width, layers=vision_layers, image_size=image_size,
                                             patch_size=patch_size)
        if vision_backend == "open_clip":
            tower = OpenClipVisionTower(TINY_OPEN_CLIP_NAME, model_config=tiny_open_clip_config(**vision_kwargs))
        else:
            tower = HFCLIPVisionTower(config=tiny_clip_vision_config(**vision_kwargs))
        llm = build_llm(config=tiny_llm_config(
            vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
            intermediate_size=intermediate_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        ))
        model = build_llava(tower, llm, image_token_id, projector=projector, freeze_projector=freeze_projector)
    return model.eval()
