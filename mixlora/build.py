"""Build the stack (tokenizer, model, image processor) from a model config, and save/reload run directories.

A model config (``configs/model/*.yaml``) has three parts::

    tokenizer:            # how to get the tokenizer
      kind: local_bpe     #   local_bpe: train a small byte-level BPE on the training corpus (CPU demos/tests)
      vocab_size: 1024    #   pretrained: load the model's own tokenizer from `path`
      path: null
      corpus: null        # local_bpe: JSON files to train on (null: the run's training annotations)
    builder:              # a Hydra `_target_` returning a LlavaMixModel; it receives the token ids it
      _target_: ...       # declares among vocab_size, image_token_id, pad/bos/eos_token_id. Only the
                          # project's builders (BUILDER_TARGETS) are called, see check_builder_targets
    init_checkpoint: null # optional full-model safetensors loaded after building (e.g. a stage-1 base)
    resize_mode: center_crop
    image_pool: 1         # average p x p windows of the patch grid before the projector (1 = off, the paper)
    feature_cache: null   # a folder caching the frozen tower's outputs across runs (mixlora.model.feature_cache)

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
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from .checkpoint import CONFIG_NAME, atomic_write, load_adapter, save_adapter

TOKENIZER_KINDS = ("local_bpe", "pretrained")
RUN_CONFIG = "config.yaml"
RUN_TOKENIZER = "tokenizer"
RUN_PROJECTOR = "projector.safetensors"
RUN_MODEL = "model.safetensors"
# The Hydra `_target_`s a model config may name: the builders of configs/model/*.yaml, and the general assembler
# with the builders of its parts (for nested `_target_` nodes). Building calls the target, so without this list a
# config from elsewhere, such as a shared run directory's config.yaml, could run any Python function.
BUILDER_TARGETS = frozenset({
    "mixlora.model.tiny.build_tiny_llava",  # configs/model/tiny.yaml
    "mixlora.build.build_pretrained_llava",  # configs/model/llava_v1_vicuna7b.yaml, smollm2_clip.yaml
    "mixlora.model.llava.build_llava",
    "mixlora.model.vision.build_vision_tower",
    "mixlora.model.vision.OpenClipVisionTower",
    "mixlora.model.vision.HFCLIPVisionTower",
    "mixlora.model.llm.build_llm",
    "mixlora.model.projector.build_projector",
})
# Opt-in for a builder of your own: comma-separated dotted names added to BUILDER_TARGETS (by name, so that trusting
# one builder does not let a config call anything else).
TRUSTED_BUILDERS_ENV = "MIXLORA_TRUSTED_BUILDERS"
# parse_record requires a task name unless given a default; the tokenizer does not use task names, and corpus
# files such as the synthetic stage1.json captions have none.
_ANY_TASK = "tokenizer-corpus"

logger = logging.getLogger(__name__)


@dataclass
class Stack:
    model: nn.Module  # mixlora.model.LlavaMixModel
    tokenizer: Any  # a transformers tokenizer with <image> and a pad token
    image_processor: Any  # mixlora.data.images.ImageProcessor matching the vision tower


class UntrustedConfigError(ValueError):
    """A model config names a callable that is not an allowed builder; the message names it, the file and the fix."""


def corpus_texts(files: Iterable[str | Path], on_error: str = "skip",
                 cache_dir: Optional[str] = None) -> tuple[list[str], list[str]]:
    """``(texts, problems)``: every turn's text of the usable records of LLaVA/Vision-Flan training files (the
    corpus a local BPE is trained on), and one message per malformed record.

    Files are read and records checked by the training dataset's own rules (``read_annotations``,
    ``parse_record``), so a file or record it refuses is refused here too, with its message; only a task name is
    not required. ``on_error="skip"`` leaves malformed records out (the dataset, built next, then skips or
    raises on them as ``data.on_error`` says), ``"raise"`` raises DataError on the first.
    """
    from .data.dataset import ON_ERROR, DataError, RecordError, malformed_message, parse_record, read_annotations
    from .options import check_choice

    check_choice("on_error", on_error, ON_ERROR)
    texts, problems = [], []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise DataError(f"tokenizer corpus file {path} does not exist (model.tokenizer.corpus, or the training "
                            "annotations); generate the synthetic suite with `python data/make_synthetic.py --out "
                            "data/synthetic --seed 0`, or fix the path")
        for index, record in enumerate(read_annotations(path, cache_dir)):
            try:
                _, _, turns = parse_record(record, default_task_name=_ANY_TASK)
            except RecordError as err:
                problems.append(malformed_message(path, index, record.get("task_name"), err))
                if on_error == "raise":
                    raise DataError(problems[-1]) from err
                continue
            texts += [text for _, text in turns]
    return texts, problems


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
    from .data.dataset import DataError

    # `corpus` in the config (e.g. captions + instructions for a base trained on both) overrides the default files
    files = [str(f) for f in tok_cfg.get("corpus") or corpus_files]
    texts, problems = corpus_texts(files)
    if problems:
        logger.warning("tokenizer corpus: left out %d malformed record(s) of %s; first: %s", len(problems),
                       ", ".join(files), problems[0])
    if not texts:
        why = f" ({len(problems)} malformed record(s); first: {problems[0]})" if problems else ""
        raise DataError(f"the tokenizer corpus ({', '.join(files) or 'no files'}) holds no usable conversation to "
                        f"train the local BPE tokenizer on{why}. Fix the training file (data.annotations), or "
                        "model.tokenizer.corpus when it is set")
    return build_tokenizer(texts, vocab_size=int(tok_cfg.get("vocab_size", 1024)),
                           save_dir=str(cache_dir) if cache_dir else None)


def token_ids(tokenizer) -> dict[str, Optional[int]]:
    from .constants import IMAGE_TOKEN

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token; build it with mixlora.data.tokenizer")
    return dict(vocab_size=len(tokenizer), image_token_id=image_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def check_builder_targets(builder: Any, source: str = "the model config", trusted: Iterable[str] = ()) -> None:
    """Refuse (UntrustedConfigError) a ``model.builder`` node that would call anything but an allowed builder.

    Allowed: :data:`BUILDER_TARGETS`, the names in ``trusted`` and in the environment variable
    ``MIXLORA_TRUSTED_BUILDERS`` (comma-separated). Every ``_target_`` is checked, nested ones included (also
    inside ``_args_`` and lists), and ``_partial_`` is refused (a builder must return the model, not a function).
    ``builder``: a plain dict or an OmegaConf node (resolved here, as instantiating it would resolve it).
    """
    from omegaconf import OmegaConf

    if OmegaConf.is_config(builder):
        builder = OmegaConf.to_container(builder, resolve=True)
    env = [name.strip() for name in os.environ.get(TRUSTED_BUILDERS_ENV, "").split(",") if name.strip()]
    allowed = BUILDER_TARGETS | set(trusted) | set(env)

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and (not isinstance(value, str) or value not in allowed):
                    raise UntrustedConfigError(
                        f"{source}: {where}._target_={value!r} is not one of the project's model builders, so it is "
                        "not called (building calls the target, and a config could name any Python function). "
                        f"Allowed: {', '.join(sorted(allowed))}. If it is a builder you wrote and you trust this "
                        f"config, allow it by name: {TRUSTED_BUILDERS_ENV}={value} (comma-separated; "
                        "trusted_builders=[...] in Python); otherwise fix or discard the config")
                if key == "_partial_" and value:
                    raise UntrustedConfigError(f"{source}: {where}._partial_ is set, but a model builder must return "
                                               f"the model, not a function; remove {where}._partial_")
                walk(value, f"{where}.{key}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    if not isinstance(builder, dict) or "_target_" not in builder:
        raise UntrustedConfigError(f"{source}: model.builder needs a _target_, e.g. "
                                   "mixlora.model.tiny.build_tiny_llava (see configs/model/)")
    walk(builder, "model.builder")


def _call_builder(builder_cfg: dict, ids: dict[str, Any]):
    """Instantiate ``builder_cfg`` passing the token ids its target declares (plain-argument builders)."""
    from hydra.utils import get_method, instantiate

    target = get_method(builder_cfg["_target_"])
    params = inspect.signature(target).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in ids.items() if accepts_any or k in params}
    return instantiate(builder_cfg, **extra)


def build_stack(model_cfg: Any, tokenizer, trusted_builders: Iterable[str] = (),
                source: str = "the model config") -> Stack:
    """Build the model for ``tokenizer`` from ``model_cfg`` (+ optional init checkpoint) and its image processor.

    Only allowed builders are called (:func:`check_builder_targets`; ``trusted_builders`` adds names, ``source``
    names the config in the message).
    """
    from omegaconf import OmegaConf

    from .data.images import ImageProcessor

    builder = model_cfg["builder"]
    if OmegaConf.is_config(builder):  # resolved once: the names checked are then the names instantiated
        builder = OmegaConf.to_container(builder, resolve=True)
    check_builder_targets(builder, source, trusted_builders)
    model = _call_builder(builder, token_ids(tokenizer))
    pool = model_cfg.get("image_pool")
    model.set_image_pool(1 if pool is None else pool)
    init = model_cfg.get("init_checkpoint")
    if init:
        load_model_weights(model, init)
    cache = model_cfg.get("feature_cache")
    if cache:
        from .model.feature_cache import FeatureCache

        model.attach_feature_cache(FeatureCache(cache, model.vision_tower))
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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None,
             trusted_builders: Iterable[str] = ()):
    """Rebuild the trained stack of ``run_dir``: base from its config, its tokenizer, adapter and projector.

    Returns ``(Stack, config)``; the model is in eval mode. The config's builder must be an allowed one (a shared
    run directory must not run code; ``trusted_builders``: see :func:`check_builder_targets`).
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
    stack = build_stack(cfg.model, tokenizer, trusted_builders, source=str(run / RUN_CONFIG))
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
