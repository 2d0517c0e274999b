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

Task routing (``routing_source="task"``, ``mixlora.data.definitions``): the collators append K task-definition
rows after the B instance rows and give ``source_rows`` (long [B + K]): instance row b -> its definition row
(>= B), definition row -> itself. Definition rows are text only (no image tokens), so ``pixel_values`` holds
the B instance images only. Their labels are all IGNORE_INDEX, so the loss (a mean over supervised tokens) is
that of the instance rows alone; ``generate`` returns the instance rows only.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager, Optional, Union

import torch
from torch import nn
from transformers import StoppingCriteria
from transformers.modeling_outputs import CausalLMOutputWithPast

import mixlora
from mixlora.constants import IGNORE_INDEX

from .projector import build_projector, load_llava_projector, load_projector_state, projector_dims


# LLM types (``config.model_type``) whose causal-LM forward computes logits = lm_head(decoder(x)) and nothing more
# (no logit scaling or soft-capping), so the loss may be computed from the decoder's hidden states directly.
PLAIN_HEAD_MODEL_TYPES = ("llama",)


def instance_rows(source_rows: torch.Tensor) -> int:
    """B, the number of instance rows of a task-routed batch laid out as the collators build it (see the module
    docstring): rows that route on themselves are the trailing definition rows, every earlier row routes on one
    of them. Raises ValueError naming the rows that break the layout."""
    rows = torch.as_tensor(source_rows)
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"source_rows must be a long tensor [rows], got {rows.dtype} {tuple(rows.shape)}")
    rows = rows.cpu()  # one small copy instead of a device sync per element below
    total = rows.shape[0]
    own = rows == torch.arange(total)
    batch = int((~own).sum())
    if batch == 0 or not bool(own[batch:].all()):
        raise ValueError(f"source_rows {rows.tolist()} is not a task-routed batch: expected the instance rows first, "
                         "each routing on a later definition row, then the definition rows, each routing on "
                         "itself (build batches with mixlora.data.collator and task definitions)")
    bad = [b for b in range(batch) if not batch <= int(rows[b]) < total]
    if bad:
        raise ValueError(f"instance rows {bad} of source_rows {rows.tolist()} do not point at a definition row "
                         f"(rows {batch}..{total - 1})")
    return batch


class _FinishRows(StoppingCriteria):
    """A generation stopping criterion that marks the given rows finished from the first step: definition rows
    are only needed at prefill (their routing is cached), so generation ends when the instance rows end."""

    def __init__(self, finished: torch.Tensor):
        self.finished = finished  # bool [rows]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.finished.to(input_ids.device)


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
        self.image_pool = 1
        self.feature_cache = None  # a mixlora.model.feature_cache.FeatureCache, or None

    def set_image_pool(self, pool: int) -> None:
        """Average the tower's g x g patch grid over ``pool`` x ``pool`` windows before the projector:
        N = g^2 -> (g / pool)^2 image tokens (``1`` = off, the paper's setting). g must be divisible by ``pool``."""
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
            raise ValueError(f"image_pool must be a positive integer (1 = no pooling), got {pool!r}")
        grid = math.isqrt(self.vision_tower.num_patches)
        if grid * grid != self.vision_tower.num_patches or grid % pool:
            raise ValueError(f"image_pool={pool} needs a square patch grid whose side is divisible by it; the tower "
                             f"has {self.vision_tower.num_patches} patches (side {grid})")
        self.image_pool = pool

    def attach_feature_cache(self, cache) -> None:
        """Serve the frozen tower's outputs from ``cache`` (``FeatureCache`` for this tower; None detaches)."""
        if cache is not None and cache.tower is not self.vision_tower:
            raise ValueError("the feature cache was built for another vision tower")
        self.feature_cache = cache

    # ---------------------------------------------------------------- properties and helpers
    @property
    def num_image_tokens(self) -> int:
        """N: how many ``<image>`` token ids the data pipeline must put in place of each ``<image>``
        (the tower's patch count, divided by ``image_pool ** 2``)."""
        return self.vision_tower.num_patches // (self.image_pool * self.image_pool)

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

    def routes_on_instruction(self) -> bool:
        """Whether any MixLoRA layer averages the instruction only (``routing_tokens="instruction"``): its data then
        needs instruction spans (datasets) and ``instruction_mask`` (collators)."""
        return any(getattr(m, "routing_tokens", None) == "instruction" for m in self.llm.modules()
                   if isinstance(m, mixlora.MixLoRALinear))

    def task_routed(self) -> bool:
        """Whether any MixLoRA layer of the LLM routes on task definitions (``routing_source="task"``)."""
        return any(getattr(m, "routing_source", None) == "task" for m in self.llm.modules()
                   if isinstance(m, mixlora.MixLoRALinear))

    def routing(self, routing_mask: Optional[torch.Tensor],
                source_rows: Optional[torch.Tensor] = None,
                sequence_mask: Optional[torch.Tensor] = None,
                instruction_mask: Optional[torch.Tensor] = None) -> ContextManager:
        """``mixlora.routing(self.llm, routing_mask, source_rows=..., sequence_mask=..., instruction_mask=...)``, or
        a no-op when all are None (then an enclosing context, e.g. the training loop's, is the one in force).
        ``sequence_mask`` (bool [B, L], the real tokens) is what ``generate`` passes so that
        ``routing_tokens="all"`` ignores the left padding (``mixlora.routing_state``).

        ``source_rows`` (long [B_total]) is required by a task-routed model (see the module docstring): a mask
        without it is refused here, before any layer runs. Wrap ``loss.backward()`` in the context too when
        gradient checkpointing is on: the recomputed forwards route again.
        """
        if routing_mask is not None and source_rows is None and self.task_routed():
            raise ValueError("this model routes on task definitions (adapter routing_source='task') but no "
                             "source_rows were given: build the batch with task definitions (train.py: "
                             "data.task_definitions=PATH; eval.py: task_definitions=PATH) so the collator appends "
                             "definition rows and returns source_rows")
        if routing_mask is None and source_rows is None and sequence_mask is None and instruction_mask is None:
            return nullcontext()
        # Looked up on the package at call time: the public name is stable, the module holding it is not.
        return mixlora.routing(self.llm, routing_mask, source_rows=source_rows, sequence_mask=sequence_mask,
                               instruction_mask=instruction_mask)

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
        """[B, 3, S, S] -> projected patch features [B, N, D_llm] (no gradient through the frozen tower).

        Tower output [B, g*g, D_v] (from the feature cache when one is attached) -> with ``image_pool`` = p > 1,
        the mean over each p x p window of the row-major g x g grid -> [B, (g/p)^2, D_v] -> projector.
        """
        features = self.feature_cache(pixel_values) if self.feature_cache is not None else self.vision_tower(pixel_values)
        if self.image_pool > 1:
            b, n, d = features.shape
            g, p = math.isqrt(n), self.image_pool
            grid = features.transpose(1, 2).reshape(b, d, g, g)
            features = torch.nn.functional.avg_pool2d(grid, p).reshape(b, d, -1).transpose(1, 2)
        weight = next(self.projector.parameters())
        return self.projector(features.to(weight.dtype))

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor]) -> torch.Tensor:
        """Token embeddings [B_total, L, D_llm] with every image-token position replaced by a patch feature.

        ``pixel_values`` [B, 3, S, S] holds one image for each of the first B rows (B <= B_total). Row b < B must
        hold exactly N = ``num_image_tokens`` image tokens and its k-th receives patch k of image b (masked scatter
        in row-major order); rows b >= B (task-definition rows) are text only and must hold none. Otherwise a
        ValueError names the rows. ``pixel_values`` may be None only when no row holds an image token.
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
        images = pixel_values.shape[0]
        if images > input_ids.shape[0]:
            raise ValueError(
                f"pixel_values has {images} images but input_ids has {input_ids.shape[0]} rows; "
                "the batch needs one image per sample (an all-zero image for text-only samples)"
            )
        if images < input_ids.shape[0]:
            # Trailing rows without an image: task-definition rows, which must be pure text.
            text_rows = (counts[images:] != 0).nonzero().flatten()
            if len(text_rows):
                rows = (text_rows + images).tolist()
                raise ValueError(
                    f"pixel_values has {images} images but input_ids has {input_ids.shape[0]} rows, and rows {rows} "
                    "after the imaged ones hold image tokens; the batch needs one image per sample (an all-zero "
                    "image for text-only samples); only task-definition rows, placed last, have no image"
                )
            counts = counts[:images]
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
        # Image tokens sit in rows < B only (checked above), so row-major order pairs them with images 0..B-1.
        return embeds.masked_scatter(is_image.unsqueeze(-1), features)

    def _check_task_batch(self, source_rows: torch.Tensor, input_ids: torch.Tensor,
                          pixel_values: Optional[torch.Tensor]) -> int:
        """B (instance rows) of a task-routed batch; ValueError unless rows, images and layout agree."""
        if source_rows.shape[0] != input_ids.shape[0]:
            raise ValueError(f"source_rows has {source_rows.shape[0]} rows but input_ids has {input_ids.shape[0]}")
        batch = instance_rows(source_rows)
        if pixel_values is not None and pixel_values.shape[0] != batch:
            raise ValueError(f"source_rows says {batch} instance rows (then {input_ids.shape[0] - batch} definition "
                             f"rows) but pixel_values holds {pixel_values.shape[0]} images; pass one image per "
                             "instance row and none for definition rows")
        return batch

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
        source_rows: Optional[torch.Tensor] = None,
        instruction_mask: Optional[torch.Tensor] = None,
    ):
        """Causal-LM forward. Without ``labels``: the HF output, ``logits`` [B, L, V]. With ``labels``: ``loss`` and
        ``logits`` [N, V] at the N supervised positions only (row-major), for an LLM in :data:`PLAIN_HEAD_MODEL_TYPES`
        (other LLMs: HF's own output, logits [B, L, V]).

        Shapes: ``input_ids``/``attention_mask``/``labels`` [B, L] long, ``routing_mask`` [B, L] bool,
        ``pixel_values`` [B, 3, S, S]. The loss is HF's causal-LM loss: position t predicts ``labels[:, t + 1]``,
        IGNORE_INDEX (-100) skipped, mean over supervised tokens, in fp32. Where the LM head is a plain linear map
        (logits = lm_head(h)), it is applied to the supervised positions' hidden states only: the same loss,
        without the [B, L, V] logits over prompt and image positions (most of an instruction-tuning batch) that
        the loss never reads. With ``routing_mask`` (and/or ``source_rows``) the LLM runs inside
        ``mixlora.routing``. Task routing: ``source_rows`` [B_total] and B_total rows (module docstring); the
        logits then have B_total rows, the definition rows last, and the loss counts the instance rows only.
        """
        for name, mask in (("attention_mask", attention_mask), ("labels", labels), ("routing_mask", routing_mask),
                           ("instruction_mask", instruction_mask)):
            self._check_mask(name, mask, input_ids)
        if source_rows is not None:
            self._check_task_batch(source_rows, input_ids, pixel_values)
        embeds = self.embed_inputs(input_ids, pixel_values)
        positions = positions_from_mask(attention_mask)
        with self.routing(routing_mask, source_rows, instruction_mask=instruction_mask):
            if labels is not None and getattr(self.llm.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES:
                return self._supervised_loss(embeds, attention_mask, positions, labels)
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                            labels=labels, use_cache=False)

    def _supervised_loss(self, embeds, attention_mask, positions, labels) -> CausalLMOutputWithPast:
        """HF's causal-LM loss with the LM head applied at the supervised positions only (see ``forward``)."""
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions,
                                        use_cache=False).last_hidden_state  # [B, L, D]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep])  # [N, V]
        return CausalLMOutputWithPast(loss=nn.functional.cross_entropy(logits.float(), targets[keep]), logits=logits)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: Optional[torch.Tensor],
        routing_mask: Optional[torch.Tensor] = None,
        source_rows: Optional[torch.Tensor] = None,
        instruction_mask: Optional[torch.Tensor] = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Batched generation from LEFT-padded prompts; returns only the new tokens [B, T_new].

        Runs ``llm.generate(inputs_embeds=..., attention_mask=...)`` with a KV cache (transformers always
        caches when generating from embeddings; ``use_cache=False`` is refused rather than silently ignored).
        Position ids come from the attention mask, so a padded row generates what it would alone. Inside
        ``mixlora.routing(llm, routing_mask, sequence_mask=attention_mask)`` the prefill routes on the prompt and
        decode steps follow each layer's ``decode_routing``; the attention mask as ``sequence_mask`` makes
        ``routing_tokens="all"`` (released) average each row's real prompt tokens, not the left padding, so a
        row routes, and decodes, as it would alone at batch 1 (the released evaluation) whatever its batch-mates.

        Task routing (``source_rows`` [B_total], B instance rows then the definition rows; module docstring):
        the definition rows are part of the prefill batch, where every instance row takes the selection of its
        definition row; with ``decode_routing="prefill"`` that selection is cached per row and reused by every
        decode step. The definition rows are marked finished at the first step (a stopping criterion), so
        generation ends when the instance rows end, and only the B instance rows are returned.
        ``decode_routing="per_step"`` is refused with task routing: a decode step would re-route the instance
        on the definition row's newly generated token, which is not its definition.
        """
        for name, mask in (("attention_mask", attention_mask), ("routing_mask", routing_mask),
                           ("instruction_mask", instruction_mask)):
            self._check_mask(name, mask, input_ids)
        batch = None
        if source_rows is not None:
            batch = self._check_task_batch(source_rows, input_ids, pixel_values)
            per_step = [n for n, m in self.llm.named_modules() if isinstance(m, mixlora.MixLoRALinear)
                        and m.routing_source == "task" and m.decode_routing == "per_step"]
            if per_step:
                raise ValueError(
                    f"{len(per_step)} MixLoRA layers (e.g. {per_step[0]}) route on task definitions with "
                    "decode_routing='per_step', which would re-route every decode step on the definition row's own "
                    "new token instead of its definition; generate with decode_routing='prefill' (eval.py: "
                    "decode_routing=prefill; mixlora.tasks.evaluate.set_decode_routing) so the prefill selection made on "
                    "the definition is reused"
                )
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
        if batch is not None and batch < input_ids.shape[0]:
            from transformers import StoppingCriteriaList

            finished = torch.arange(input_ids.shape[0]) >= batch
            criteria = StoppingCriteriaList(generate_kwargs.pop("stopping_criteria", None) or [])
            criteria.append(_FinishRows(finished))
            generate_kwargs["stopping_criteria"] = criteria
        with self.routing(routing_mask, source_rows, sequence_mask=attention_mask.bool(),
                          instruction_mask=instruction_mask):
            new_tokens = self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
        return new_tokens if batch is None else new_tokens[:batch]


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
