"""Build the language model: any Hugging Face ``AutoModelForCausalLM``, from a local folder or a config dict.

One builder serves the 7B checkpoint and the tiny CPU model, so tests exercise the same code path as real runs.
Nothing is downloaded: folders are opened with ``local_files_only=True`` and must hold weights
(``*.safetensors``, ``pytorch_model*.bin``, or the GGUF file named by ``gguf_file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """``torch.float32`` or one of the names in ``DTYPES`` (``"bfloat16"``, ``"bf16"``, ...) -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype {dtype!r} is not supported; use one of {sorted(DTYPES)} or a torch.dtype")


def _check_weights(folder: Path, gguf_file: Optional[str]) -> None:
    if gguf_file is not None:
        if not (folder / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file {gguf_file!r} not found in {folder}")
        return
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; it is not a Hugging Face model folder")
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise FileNotFoundError(
            f"{folder} has a config.json but no weights (looked for {', '.join(WEIGHT_PATTERNS)}; found {present}). "
            "Copy the checkpoint's weight files there, or pass config= to build a randomly initialised model."
        )


def build_llm(
    path: Optional[str] = None,
    config: Optional[Union[Mapping[str, Any], Any]] = None,
    dtype: Union[str, torch.dtype] = "float32",
    attn_implementation: str = "sdpa",
    gguf_file: Optional[str] = None,
    vocab_size: Optional[int] = None,
) -> nn.Module:
    """A causal LM from a local folder (``path``) or from ``config`` (random init); exactly one of them.

    Args:
        path: local folder of a Hugging Face checkpoint (never a Hub id: nothing is downloaded).
        config: a ``PretrainedConfig`` or a dict with ``model_type`` (e.g. ``{"model_type": "llama",
            "hidden_size": 128, ...}``) for a random-init model such as the tiny CPU LLM.
        dtype: parameter dtype, a torch.dtype or a name from ``DTYPES``.
        attn_implementation: ``"sdpa"`` (default), ``"eager"`` or ``"flash_attention_2"``.
        gguf_file: name of a GGUF file inside ``path`` (dequantised to ``dtype`` by transformers; needs the
            ``gguf`` package).
        vocab_size: the tokenizer's length; when it exceeds the embedding rows (the tokenizer gained ``<image>``
            or a pad token), the input/output embeddings are resized to it (new rows: transformers' mean
            resizing). A smaller value leaves the embeddings alone (checkpoints often pad the vocabulary).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    if (path is None) == (config is None):
        raise ValueError("build_llm needs exactly one of path= (a local checkpoint folder) or config= (random init)")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation {attn_implementation!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    torch_dtype = resolve_dtype(dtype)
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"LLM path {path!r} is not a local folder. Models are never downloaded: copy the checkpoint to disk "
                "and pass its folder."
            )
        _check_weights(folder, gguf_file)
        kwargs: dict[str, Any] = dict(local_files_only=True, dtype=torch_dtype, attn_implementation=attn_implementation)
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    else:
        if gguf_file is not None:
            raise ValueError("gguf_file= needs path= (the folder holding the GGUF file)")
        if not isinstance(config, PretrainedConfig):
            values = dict(config)
            if "model_type" not in values:
                raise ValueError(f"LLM config dict needs a 'model_type' (e.g. 'llama'); got keys {sorted(values)}")
            config = AutoConfig.for_model(values.pop("model_type"), **values)
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation=attn_implementation)
    if vocab_size is not None:
        rows = model.get_input_embeddings().num_embeddings
        if vocab_size > rows:
            model.resize_token_embeddings(vocab_size)
    return model
