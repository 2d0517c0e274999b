"""Frozen vision towers that return per-patch features, as LLaVA feeds them to the projector.

Both backends share one small interface:

- ``tower(pixel_values)``: pixel_values [B, 3, H, W] (normalised with the tower's mean/std, H = W =
  ``image_size``) -> patch features [B, N, D] from ``feature_layer``, the CLS token dropped;
- ``num_patches`` (N, the number of ``<image>`` tokens per image the data pipeline must insert),
  ``hidden_size`` (D), ``image_size``, ``image_mean``, ``image_std``, ``image_processor_kwargs()``.

``feature_layer`` indexes the list of hidden states ``[embeddings, block 1, ..., block L]`` exactly like
Hugging Face's ``output_hidden_states`` and LLaVA's ``mm_vision_select_layer``: the default -2 is the output
of the penultimate transformer block (LLaVA; CLIP ViT-L/14-224 gives 256 x 1024 features), -1 the last block.

Towers are frozen (no parameter requires grad, forward runs under ``torch.no_grad``) and stay in eval mode
even when the surrounding model is put in train mode, so dropout-like layers never fire.

Nothing is ever downloaded: open_clip takes a local state-dict file (``pretrained=``), a ``local-dir:`` folder
or a random-init architecture (optionally registered from ``model_config``); HF CLIP takes a local folder or a
``CLIPVisionConfig``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

VISION_BACKENDS = ("open_clip", "hf_clip")
# CLIP's normalisation (OpenAI), the default for both backends when a checkpoint does not say otherwise.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resolve_layer(feature_layer: int, num_layers: int) -> int:
    """Map ``feature_layer`` (negative allowed) to an index into [embeddings, block 1, ..., block L]."""
    if not isinstance(feature_layer, int) or isinstance(feature_layer, bool):
        raise TypeError(f"feature_layer must be an int, got {feature_layer!r}")
    if not -(num_layers + 1) <= feature_layer <= num_layers:
        raise ValueError(
            f"feature_layer={feature_layer} is out of range for a tower with {num_layers} blocks; valid values are "
            f"{-(num_layers + 1)}..{num_layers} (hidden states [embeddings, block 1..{num_layers}]; -2 = penultimate)"
        )
    return feature_layer % (num_layers + 1)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class _FrozenTower(nn.Module):
    """Shared behaviour: frozen, always in eval mode, preprocessing parameters as plain values."""

    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    num_patches: int
    hidden_size: int

    def train(self, mode: bool = True) -> "_FrozenTower":
        # The tower is frozen: model.train() on the whole LLaVA stack must not switch it to train mode.
        return super().train(False)

    def image_processor_kwargs(self) -> dict[str, Any]:
        """Arguments for the data pipeline's ``ImageProcessor(image_size, mean, std, ...)``."""
        return {"image_size": self.image_size, "mean": list(self.image_mean), "std": list(self.image_std)}

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        expected = (3, self.image_size, self.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be [batch, 3, {self.image_size}, {self.image_size}] for this vision tower, got "
                f"{tuple(pixel_values.shape)}; configure the ImageProcessor with tower.image_processor_kwargs()"
            )


class OpenClipVisionTower(_FrozenTower):
    """The image tower of an open_clip model (only ``model.visual`` is kept; the text tower is dropped).

    Args:
        model_name: an open_clip architecture name (``ViT-L-14``), a ``local-dir:/folder`` holding
            ``open_clip_config.json`` plus weights, or the name to register ``model_config`` under.
        pretrained: path of a local state-dict file for ``model_name``; None = random init. Tags such as
            ``"openai"`` are refused because they download.
        model_config: optional architecture dict (``embed_dim``, ``vision_cfg``, ``text_cfg``) registered with
            ``open_clip.add_model_config`` under ``model_name`` (how the tiny CPU tower is defined).
        feature_layer: which hidden state to return (see the module docstring); default -2.
        precision: open_clip precision string (``fp32``, ``bf16``, ``fp16``).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: Optional[str] = None,
        model_config: Optional[Mapping[str, Any]] = None,
        feature_layer: int = -2,
        precision: str = "fp32",
    ):
        super().__init__()
        import open_clip  # imported here: it pulls timm, which is slow and only needed for this backend
        from open_clip.transformer import VisionTransformer

        if model_name.startswith("hf-hub:"):
            raise ValueError(f"open_clip model {model_name!r} would download from the Hub; use a local-dir: folder")
        if model_config is not None:
            register_open_clip_config(model_name, model_config)
        if pretrained is not None and not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"open_clip pretrained={pretrained!r} is not a local file. Pass the path of a saved state dict "
                "(pretrained tags such as 'openai' download weights and are not allowed here)."
            )
        if model_name.startswith("local-dir:") and not Path(model_name[len("local-dir:"):]).is_dir():
            raise FileNotFoundError(f"open_clip folder {model_name[len('local-dir:'):]!r} does not exist")
        clip = open_clip.create_model(
            model_name, pretrained=pretrained, precision=precision, pretrained_image=False, pretrained_text=False
        )
        visual = clip.visual
        if not isinstance(visual, VisionTransformer):
            raise TypeError(
                f"open_clip model {model_name!r} has a {type(visual).__name__} image tower; only ViT towers "
                "(open_clip.transformer.VisionTransformer) give per-patch tokens here"
            )
        self.visual = visual  # the text tower is dropped with ``clip``
        _freeze(self.visual)
        num_layers = len(visual.transformer.resblocks)
        self.feature_layer = feature_layer
        self._hidden_index = _resolve_layer(feature_layer, num_layers)
        if self._hidden_index == 0:
            raise ValueError(
                "feature_layer selects the embedding output (hidden state 0); the open_clip backend returns "
                "transformer block outputs only: use 1..L or a negative index >= -L"
            )
        grid_h, grid_w = visual.grid_size
        if visual.image_size[0] != visual.image_size[1]:
            raise ValueError(f"only square images are supported, open_clip tower has image_size {visual.image_size}")
        self.image_size = int(visual.image_size[0])
        self.num_patches = grid_h * grid_w
        self.hidden_size = visual.transformer.width
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.image_mean = tuple(float(v) for v in cfg.get("mean", CLIP_MEAN))
        self.image_std = tuple(float(v) for v in cfg.get("std", CLIP_STD))

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, N, D]: the chosen block's tokens without CLS (no final LayerNorm, as LLaVA)."""
        self._check_pixels(pixel_values)
        dtype = self.visual.conv1.weight.dtype
        out = self.visual.forward_intermediates(
            pixel_values.to(dtype),
            indices=[self._hidden_index - 1],  # block i (1-based) is resblocks[i - 1]
            stop_early=True,  # later blocks are never needed
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["image_intermediates"][0]


class HFCLIPVisionTower(_FrozenTower):
    """Hugging Face ``CLIPVisionModel`` (LLaVA's own tower), from a local folder or a config.

    Args:
        path: local folder of a CLIP or CLIP-vision checkpoint (e.g. a copy of openai/clip-vit-large-patch14);
            its ``preprocessor_config.json``, when present, supplies the image mean/std.
        config: a ``CLIPVisionConfig`` or its dict, for a random-init tower (tests, tiny runs).
        feature_layer: hidden-state index (see the module docstring); default -2.
        dtype: parameter dtype (``torch.float32``, ``"bfloat16"``, ...).
    """

    def __init__(
        self,
        path: Optional[str] = None,
        config: Optional[Any] = None,
        feature_layer: int = -2,
        dtype: Any = torch.float32,
    ):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        from .llm import resolve_dtype

        if (path is None) == (config is None):
            raise ValueError("HFCLIPVisionTower needs exactly one of path= (a local folder) or config=")
        dtype = resolve_dtype(dtype)
        mean, std = CLIP_MEAN, CLIP_STD
        if path is not None:
            folder = Path(path)
            if not folder.is_dir():
                raise FileNotFoundError(f"CLIP vision tower folder {path!r} does not exist (nothing is downloaded)")
            model = CLIPVisionModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
            processor_file = folder / "preprocessor_config.json"
            if processor_file.is_file():
                processor = json.loads(processor_file.read_text())
                mean = tuple(processor.get("image_mean", mean))
                std = tuple(processor.get("image_std", std))
        else:
            if isinstance(config, Mapping):
                config = CLIPVisionConfig(**config)
            model = CLIPVisionModel(config).to(dtype)
        self.model = model
        _freeze(self.model)
        cfg = model.config
        self.feature_layer = feature_layer
        self._hidden_index = _resolve_layer(feature_layer, cfg.num_hidden_layers)
        self.image_size = int(cfg.image_size)
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.hidden_size = cfg.hidden_size
        self.image_mean = tuple(float(v) for v in mean)
        self.image_std = tuple(float(v) for v in std)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, N, D] = ``hidden_states[feature_layer][:, 1:]`` (LLaVA's "patch" features)."""
        self._check_pixels(pixel_values)
        out = self.model(pixel_values=pixel_values.to(self.model.dtype), output_hidden_states=True)
        return out.hidden_states[self._hidden_index][:, 1:]


def register_open_clip_config(name: str, config: Mapping[str, Any]) -> None:
    """Register an open_clip architecture dict under ``name`` (so ``create_model(name)`` builds it).

    open_clip only reads configs from JSON files; the file goes to a temporary folder and is parsed at once
    into open_clip's registry, so the folder can disappear afterwards. Registering the same dict again is a
    no-op; a different dict under a known name (including open_clip's own, e.g. ``ViT-L-14``) is an error.
    """
    import open_clip

    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise ValueError(f"open_clip model_config for {name!r} lacks {missing}; it needs embed_dim, vision_cfg, text_cfg")
    if "/" in name or name.startswith(("local-dir:", "hf-hub:")):
        raise ValueError(f"cannot register an open_clip config under {name!r}; use a plain name like 'tiny-vit'")
    text = json.dumps(dict(config))
    existing = open_clip.get_model_config(name)
    if existing is not None:
        if existing == json.loads(text):
            return  # already registered (e.g. a second tiny build): nothing to do
        raise ValueError(
            f"open_clip already knows an architecture named {name!r} that differs from this model_config; "
            "choose another name (registering would silently replace it for the whole process)"
        )
    with tempfile.TemporaryDirectory(prefix="mixlora_openclip_") as folder:
        file = Path(folder) / f"{name}.json"
        file.write_text(text)
        open_clip.add_model_config(file)


def build_vision_tower(backend: str = "open_clip", **kwargs: Any) -> nn.Module:
    """``OpenClipVisionTower(**kwargs)`` for ``backend="open_clip"``, ``HFCLIPVisionTower(**kwargs)`` for ``"hf_clip"``."""
    if backend not in VISION_BACKENDS:
        raise ValueError(f"vision backend {backend!r} is not supported; choose one of {', '.join(VISION_BACKENDS)}")
    if backend == "open_clip":
        return OpenClipVisionTower(**kwargs)
    return HFCLIPVisionTower(**kwargs)
