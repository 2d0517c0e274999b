"""Build the stack (tokenizer, model, image processor) from a model config, and save/reload run directories.

A model config (``configs/model/*.yaml``) has three parts::

    tokenizer:            # how to get the tokenizer
      kind: local_bpe     #   local_bpe: train a small byte-level BPE on the training corpus (CPU demos/tests)
      vocab_size: 1024    #   pretrained: load the model's own tokenizer from `path`
      path: null
      corpus: null        # local_bpe: JSON files to train on (null: the run's training annotations)
    builder:              # a Hydra `_target_` returning a LlavaMixModel; it receives the token ids it
      _target_: ...       # declares among vocab_size, image_token_id, pad/bos/eos_token_id
    init_checkpoint: null # optional full-model safetensors loaded after building (e.g. a stage-1 base)
    resize_mode: center_crop

A run directory holds everything needed to rebuild the trained model::

    RUN/config.yaml                  resolved config of the run (model, adapter, data, trainer, ...)
    RUN/tokenizer/                   the exact tokenizer used
    RUN/adapter_config.json          mixlora.save_adapter (absent for adapter=none)
    RUN/adapter_model.safetensors
    RUN/projector.safetensors        projector weights (trained in the paper's setup)
    RUN/model.safetensors            only for full training (model.train_llm=true): the whole model, usable as
                                     another run's `model.init_checkpoint` (the demo's stage-1 base)
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
from torch import nn

from .checkpoint import CONFIG_NAME, atomic_write, load_adapter, save_adapter

TOKENIZER_KINDS = ("local_bpe", "pretrained")
RUN_CONFIG = "config.yaml"
RUN_TOKENIZER = "tokenizer"
RUN_PROJECTOR = "projector.safetensors"
RUN_MODEL = "model.safetensors"


@dataclass
class Stack:
    model: nn.Module  # mixlora.model.LlavaMixModel
    tokenizer: Any  # a transformers tokenizer with <image> and a pad token
    image_processor: Any  # mixlora.data.images.ImageProcessor matching the vision tower


def conversation_texts(files: Iterable[str | Path]) -> Iterator[str]:
    """Every turn's text in LLaVA/Vision-Flan JSON files (the corpus a local BPE is trained on)."""
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer corpus file {path} does not exist (generate the synthetic suite with "
                                    "`python data/make_synthetic.py --out data/synthetic --seed 0`, or fix the path)")
        for record in json.loads(path.read_text()):
            for turn in record.get("conversations", []):
                yield str(turn.get("value", ""))


def build_tokenizer_from_config(tok_cfg: Any, corpus_files: Iterable[str | Path] = (),
                                cache_dir: Optional[str | Path] = None):
    """A tokenizer as the model config's ``tokenizer`` node says (see the module docstring)."""
    from .data.tokenizer import build_tokenizer, load_tokenizer
    from .options import check_choice

    kind = check_choice("model.tokenizer.kind", tok_cfg["kind"], TOKENIZER_KINDS)
    if kind == "pretrained":
        if not tok_cfg.get("path"):
            raise ValueError("model.tokenizer.kind=pretrained needs model.tokenizer.path (a local folder)")
        return load_tokenizer(str(tok_cfg["path"]))
    # `corpus` in the config (e.g. captions + instructions for a base trained on both) overrides the default files
    texts = list(conversation_texts(tok_cfg.get("corpus") or corpus_files))
    return build_tokenizer(texts, vocab_size=int(tok_cfg.get("vocab_size", 1024)),
                           save_dir=str(cache_dir) if cache_dir else None)


def token_ids(tokenizer) -> dict[str, Optional[int]]:
    from .constants import IMAGE_TOKEN

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token; build it with mixlora.data.tokenizer")
    return dict(vocab_size=len(tokenizer), image_token_id=image_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def _call_builder(builder_cfg: Any, ids: dict[str, Any]):
    """Instantiate ``builder_cfg`` passing the token ids its target declares (plain-argument builders)."""
    from hydra.utils import get_method, instantiate

    target = get_method(builder_cfg["_target_"])
    params = inspect.signature(target).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in ids.items() if accepts_any or k in params}
    return instantiate(builder_cfg, **extra)


def build_stack(model_cfg: Any, tokenizer) -> Stack:
    """Build the model for ``tokenizer`` from ``model_cfg`` (+ optional init checkpoint) and its image processor."""
    from .data.images import ImageProcessor

    model = _call_builder(model_cfg["builder"], token_ids(tokenizer))
    init = model_cfg.get("init_checkpoint")
    if init:
        load_model_weights(model, init)
    processor = ImageProcessor(**model.image_processor_kwargs(), resize_mode=model_cfg.get("resize_mode", "center_crop"))
    return Stack(model, tokenizer, processor)


def build_pretrained_llava(vision: dict, llm: dict, image_token_id: int, vocab_size: int,
                           projector: str = "linear", projector_path: Optional[str] = None,
                           freeze_projector: bool = False):
    """The real-weights stack: ``build_vision_tower(**vision)`` + ``build_llm(**llm, vocab_size=...)`` + projector.

    ``vocab_size`` (len of the tokenizer, which may have gained ``<image>``) resizes the LLM's embeddings.
    """
    from .model.llava import build_llava
    from .model.llm import build_llm
    from .model.vision import build_vision_tower

    tower = build_vision_tower(**dict(vision))
    lm = build_llm(**dict(llm), vocab_size=vocab_size)
    return build_llava(tower, lm, image_token_id, projector=projector, projector_path=projector_path,
                       freeze_projector=freeze_projector)


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load a full-model safetensors state dict (e.g. a stage-1 base); strict, with a clear message."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_checkpoint {path} does not exist (train the base first, or set it to null)")
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: {len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")


def save_run(run_dir: str | Path, stack: Stack, config: Any, full_model: bool = False) -> Path:
    """Write config, tokenizer, adapter (if injected) and projector into ``run_dir`` (atomic file writes).

    ``full_model``: also write every weight of the model (after full training of the LLM).
    """
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(config, resolve=True) if not isinstance(config, str) else config
    atomic_write(run / RUN_CONFIG, lambda tmp: Path(tmp).write_text(text))
    stack.tokenizer.save_pretrained(str(run / RUN_TOKENIZER))
    if getattr(stack.model.llm, "mixlora_adapter_config", None) is not None:
        save_adapter(stack.model.llm, run)
    state = {k: v.detach().contiguous().cpu() for k, v in stack.model.projector_state_dict().items()}
    atomic_write(run / RUN_PROJECTOR, lambda tmp: save_file(state, tmp))
    if full_model:
        full = {k: v.detach().contiguous().cpu() for k, v in stack.model.state_dict().items()}
        atomic_write(run / RUN_MODEL, lambda tmp: save_file(full, tmp))
    return run


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
    """Rebuild the trained stack of ``run_dir``: base from its config, its tokenizer, adapter and projector.

    Returns ``(Stack, config)``; the model is in eval mode.
    """
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    run = Path(run_dir)
    if not (run / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"{run} is not a run directory: {RUN_CONFIG} is missing (pass the output_dir of a "
                                "finished training run)")
    cfg = OmegaConf.load(run / RUN_CONFIG)
    tokenizer = AutoTokenizer.from_pretrained(str(run / RUN_TOKENIZER))
    stack = build_stack(cfg.model, tokenizer)
    if (run / RUN_MODEL).is_file():
        load_model_weights(stack.model, run / RUN_MODEL)
    if (run / CONFIG_NAME).is_file():
        load_adapter(stack.model.llm, run)
    if not (run / RUN_PROJECTOR).is_file():
        raise FileNotFoundError(f"{run / RUN_PROJECTOR} is missing: the run did not finish saving")
    stack.model.load_projector_state_dict(load_file(str(run / RUN_PROJECTOR)))
    stack.model.to(device=device, **({"dtype": dtype} if dtype is not None else {}))
    stack.model.eval()
    return stack, cfg
