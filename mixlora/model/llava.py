"""The LLaVA-style model: frozen vision tower -> projector -> causal LLM, with image features spliced in.

Why our own module rather than transformers' ``LlavaForConditionalGeneration``: that class only takes a
Hugging Face vision model (we also need open_clip towers), its projector is fixed to the two-layer MLP with
``linear_1``/``linear_2`` names (the paper uses LLaVA v1's single linear layer, loaded from ``mm_projector.bin``
keys), and we would still have to wrap every forward and ``generate`` in the MixLoRA routing context. The
splice it performs is a few lines (below); composing three plain modules keeps the whole stack readable and
lets any ``AutoModelForCausalLM`` serve as the LLM.

Batch contract (see ``mixlora.data``): each ``<image>`` has already been expanded by the data pipeline into
N = ``vision_tower.num_patches`` consecutive copies of ``image_token_id``, one image per sample (text-only samples
carry an all-zero image and still hold the N tokens). The model replaces the embeddings at those positions,
in order, by the projected patch features.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Optional, Union

import torch
from torch import nn

import mixlora

from .projector import build_projector, load_llava_projector, load_projector_state, projector_dims


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, L] counting real tokens only (0 at the first real token), 0 on padding.

    Equals ``arange(L)`` on the real tokens of right-padded rows and matches what HF ``generate`` builds for
    left-padded prompts, so ``forward`` scores left- and right-padded batches like unpadded samples.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


class LlavaMixModel(nn.Module):
    """Vision tower + projector + LLM (composition; each part is a plain module).

    Args:
        vision_tower: a frozen tower from ``mixlora.model.vision`` ([B, 3, S, S] -> [B, N, D_v]).
        projector: ``nn.Module`` mapping [B, N, D_v] -> [B, N, D_llm] (``mixlora.model.projector``).
        llm: a Hugging Face causal LM; frozen here (adapters injected later make their own factors trainable).
        image_token_id: the tokenizer id of ``<image>``; must be inside the LLM's vocabulary.
        freeze_projector: False (default) trains the projector, as LLaVA and the released MixLoRA code do.

    Trainable after construction: the projector only (unless frozen). ``mixlora.inject_adapters(model.llm, cfg)``
    then adds adapter factors; it freezes the LLM only, so the projector's flag is kept.
    """

    def __init__(
        self,
        vision_tower: nn.Module,
        projector: nn.Module,
        llm: nn.Module,
        image_token_id: int,
        freeze_projector: bool = False,
    ):
        super().__init__()
        d_in, d_out = projector_dims(projector)
        d_llm = llm.get_input_embeddings().embedding_dim
        if d_in != vision_tower.hidden_size or d_out != d_llm:
            raise ValueError(
                f"projector maps {d_in} -> {d_out} but the vision tower gives {vision_tower.hidden_size}-dim features "
                f"and the LLM embeds in {d_llm} dims"
            )
        vocab = llm.get_input_embeddings().num_embeddings
        if not 0 <= image_token_id < vocab:
            raise ValueError(
                f"image_token_id={image_token_id} is outside the LLM vocabulary (size {vocab}); add '<image>' to the "
                "tokenizer and build the LLM with vocab_size=len(tokenizer)"
            )
        self.vision_tower = vision_tower
        self.projector = projector
        self.llm = llm
        self.image_token_id = int(image_token_id)
        for p in self.llm.parameters():
            p.requires_grad_(False)
        self.set_projector_trainable(not freeze_projector)

    # ---------------------------------------------------------------- properties and helpers
    @property
    def num_image_tokens(self) -> int:
        """N: how many ``<image>`` token ids the data pipeline must put in place of each ``<image>``."""
        return self.vision_tower.num_patches

    def image_processor_kwargs(self) -> dict[str, Any]:
        """``{"image_size", "mean", "std"}`` of the vision tower, for the data pipeline's ImageProcessor."""
        return self.vision_tower.image_processor_kwargs()

    def set_projector_trainable(self, trainable: bool) -> None:
        for p in self.projector.parameters():
            p.requires_grad_(trainable)

    def projector_state_dict(self) -> dict[str, torch.Tensor]:
        """The projector's weights (keys as LLaVA's ``mm_projector.bin`` without ``model.mm_projector.``)."""
        return {k: v.detach().clone() for k, v in self.projector.state_dict().items()}

    def load_projector_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``projector_state_dict``; clear errors on key or shape mismatch."""
        load_projector_state(self.projector, state)

    def routing(self, routing_mask: Optional[torch.Tensor]) -> ContextManager:
        """``mixlora.routing(self.llm, routing_mask)``, or a no-op for None.

        Wrap ``loss.backward()`` in it too when gradient checkpointing is on: the recomputed forwards route again.
        """
        # Looked up on the package at call time: the public name is stable, the module holding it is not.
        return nullcontext() if routing_mask is None else mixlora.routing(self.llm, routing_mask)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Activation checkpointing in the LLM (non-reentrant by default in transformers 5)."""
        # transformers >= 5.x renamed the method and deprecated the old name; accept both versions.
        enable = getattr(self.llm, "activation_checkpointing_enable", None)
        if enable is None:
            self.llm.gradient_checkpointing_enable(**kwargs)
        else:
            enable(**kwargs)

    # ---------------------------------------------------------------- inputs
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> projected patch features [B, N, D_llm] (no gradient through the frozen tower)."""
        features = self.vision_tower(pixel_values)
        weight = next(self.projector.parameters())
        return self.projector(features.to(weight.dtype))

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor]) -> torch.Tensor:
        """Token embeddings [B, L, D_llm] with every image-token position replaced by a patch feature.

        Row b's k-th image-token position receives patch k of image b (masked scatter in row-major order).
        Each row must hold exactly N image tokens, N = ``num_image_tokens``; otherwise a ValueError names
        the rows. ``pixel_values`` may be None only when no row holds an image token.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        embeds = self.llm.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id  # [B, L]
        counts = is_image.sum(dim=1)
        if pixel_values is None:
            if bool(counts.any()):
                raise ValueError(
                    f"input_ids hold {int(counts.sum())} image tokens (id {self.image_token_id}) but pixel_values is None"
                )
            return embeds
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} images but input_ids has {input_ids.shape[0]} rows; "
                "the batch needs one image per sample (an all-zero image for text-only samples)"
            )
        n = self.num_image_tokens
        bad = (counts != n).nonzero().flatten().tolist()
        if bad:
            found = {row: int(counts[row]) for row in bad}
            raise ValueError(
                f"image-token count mismatch: every row needs exactly {n} tokens with id {self.image_token_id} "
                f"(one image x {n} patch features; {pixel_values.shape[0]} images need {pixel_values.shape[0] * n}), "
                f"but the batch holds {int(counts.sum())}; rows {{row: count}} = {found}. The data pipeline must expand "
                f"each '<image>' into num_image_tokens={n} copies of the image token."
            )
        features = self.encode_images(pixel_values).to(embeds.dtype)  # [B, N, D]
        return embeds.masked_scatter(is_image.unsqueeze(-1), features)

    def _check_mask(self, name: str, mask: Optional[torch.Tensor], input_ids: torch.Tensor) -> None:
        if mask is None and name == "attention_mask":
            raise ValueError("attention_mask is required (1 = real token, 0 = padding); the collators provide it")
        if mask is not None and tuple(mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"{name} has shape {tuple(mask.shape)} but input_ids has {tuple(input_ids.shape)}")

    # ---------------------------------------------------------------- forward / generate
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: Optional[torch.Tensor],
        labels: Optional[torch.Tensor] = None,
        routing_mask: Optional[torch.Tensor] = None,
    ):
        """Causal-LM forward; returns the HF output (``loss`` when ``labels`` are given, ``logits`` [B, L, V]).

        Shapes: ``input_ids``/``attention_mask``/``labels`` [B, L] long, ``routing_mask`` [B, L] bool,
        ``pixel_values`` [B, 3, S, S]. The loss is HF's: labels shifted by one, IGNORE_INDEX (-100) skipped,
        mean over supervised tokens. With ``routing_mask`` the LLM runs inside ``mixlora.routing``.
        """
        for name, mask in (("attention_mask", attention_mask), ("labels", labels), ("routing_mask", routing_mask)):
            self._check_mask(name, mask, input_ids)
        embeds = self.embed_inputs(input_ids, pixel_values)
        with self.routing(routing_mask):
            return self.llm(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask),
                labels=labels,
                use_cache=False,
            )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: Optional[torch.Tensor],
        routing_mask: Optional[torch.Tensor] = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Batched generation from LEFT-padded prompts; returns only the new tokens [B, T_new].

        Runs ``llm.generate(inputs_embeds=..., attention_mask=...)`` with a KV cache (transformers always
        caches when generating from embeddings; ``use_cache=False`` is refused rather than silently ignored).
        Position ids come from the attention mask, so a padded row generates what it would alone. Inside
        ``mixlora.routing(llm, routing_mask)`` the prefill routes on the prompt and decode steps follow each
        layer's ``decode_routing``.
        """
        for name, mask in (("attention_mask", attention_mask), ("routing_mask", routing_mask)):
            self._check_mask(name, mask, input_ids)
        if generate_kwargs.get("use_cache", True) is False:
            raise ValueError(
                "generate() got use_cache=False, but it always uses a KV cache: transformers forces use_cache=True "
                "when generating from inputs_embeds. For a no-cache reference, call forward() on the growing sequence."
            )
        if not bool(attention_mask[:, -1].all()):
            rows = (attention_mask[:, -1] == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"generate() needs LEFT-padded prompts, but rows {rows} end in padding (attention_mask[:, -1] == 0); "
                "build the batch with the generation collator (padding_side='left')"
            )
        embeds = self.embed_inputs(input_ids, pixel_values)
        with self.routing(routing_mask):
            return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def build_llava(
    vision: nn.Module,
    llm: nn.Module,
    image_token_id: int,
    projector: Union[str, nn.Module] = "linear",
    projector_path: Optional[Union[str, Path]] = None,
    freeze_projector: bool = False,
) -> LlavaMixModel:
    """Assemble ``LlavaMixModel`` from plain arguments (Hydra ``_target_``-friendly).

    Args:
        vision: a vision tower (e.g. ``OpenClipVisionTower`` or ``HFCLIPVisionTower``, instantiated by Hydra).
        llm: a causal LM from ``build_llm``.
        image_token_id: the tokenizer id of ``<image>``.
        projector: a kind (``"linear"`` | ``"mlp2x_gelu"``) to build from the tower and LLM widths, or a module.
        projector_path: optional LLaVA ``mm_projector.bin`` to initialise the projector from (e.g. the LLaVA-v1
            pretrain projector the paper starts from).
        freeze_projector: keep the projector frozen (default False: trained, as in the paper's code).
    """
    if isinstance(projector, str):
        d_llm = llm.get_input_embeddings().embedding_dim
        projector = build_projector(projector, vision.hidden_size, d_llm)
        # float32 even for a bf16 LLM: the projector is tiny and trains; features are cast on the way out.
        projector = projector.to(device=next(llm.parameters()).device)
    if projector_path is not None:
        load_llava_projector(projector, projector_path)
    return LlavaMixModel(vision, projector, llm, image_token_id, freeze_projector=freeze_projector)
