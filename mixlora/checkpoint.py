"""Adapter checkpoints: ``adapter_config.json`` + ``adapter_model.safetensors`` (peft-like layout).

Keys are ``<module path>.<param>`` with params named ``lora_a``, ``lora_b``, ``router_a.weight``,
``router_b.weight``, ``router_cfs``: the ``lora_``/``router_`` prefixes let filters find them. Routers are
always saved, trained or not: routing depends on their (seeded, random) values, and the released code's
adapter file omitted them. Writes are atomic (temp file + rename), so a crash never leaves a torn file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .inject import AdapterConfig, adapter_modules, inject_adapters

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "mixlora-adapter/1"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{key: tensor} of every ``lora_*``/``router_*`` parameter of the adapters in ``model``."""
    state = {}
    for name, module in adapter_modules(model).items():
        for pname, p in module.named_parameters():
            if pname.startswith(("lora_", "router_")):
                state[f"{name}.{pname}"] = p
    return state


def hash_file(path: str | os.PathLike, digest=None):
    """Feed the bytes of ``path`` into ``digest`` (a new sha256 if None) in 4 MiB blocks; returns the digest."""
    import hashlib

    digest = hashlib.sha256() if digest is None else digest
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same directory, so the rename is atomic).

    The temporary file is created with mode 0o666 filtered by the umask (and the folder's default ACL), like
    any ``open(path, "w")``; ``tempfile.mkstemp`` would make it 0o600, so a run folder would mix private
    renamed files with readable appended ones, and teammates could read only some of a shared run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:  # O_EXCL: never write into a file another process is writing
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"could not create a temporary file next to {path}: 100 names were taken")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter config and weights of an injected ``model`` into ``out_dir``."""
    config: AdapterConfig | None = getattr(model, "mixlora_adapter_config", None)
    if config is None:
        raise ValueError("model has no injected adapters (mixlora.inject_adapters was not called on it)")
    out = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    meta = {"format": FORMAT, **config.to_dict(), "modules": sorted(adapter_modules(model))}
    if extra:
        meta["extra"] = extra
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return out


def read_adapter_config(path: str | os.PathLike) -> AdapterConfig:
    cfg_path = Path(path) / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no adapter checkpoint at {path}: {CONFIG_NAME} is missing (expected the output "
                                "directory of a training run, or a folder written by mixlora.save_adapter)")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not a {FORMAT} adapter config (format={meta.get('format')!r})")
    fields = {k: v for k, v in meta.items() if k not in ("format", "modules", "extra")}
    return AdapterConfig.coerce(fields)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> AdapterConfig:
    """Load an adapter into ``model``, injecting it first if the model has none; strict on names and shapes."""
    config = read_adapter_config(path)
    current: AdapterConfig | None = getattr(model, "mixlora_adapter_config", None)
    if current is None:
        inject_adapters(model, config)
    elif current != config:
        raise ValueError(f"model already holds a different adapter ({current}) than the checkpoint at {path} "
                         f"({config}); load into a fresh base model")
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"adapter weights {weights} are missing (the checkpoint is incomplete)")
    saved = load_file(str(weights))
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in set(saved) & set(expected) if saved[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        def head(keys):
            return keys[:5] + ([f"... {len(keys) - 5} more"] if len(keys) > 5 else [])

        detail = [f"{len(missing)} missing: {head(missing)}"] if missing else []
        detail += [f"{len(unexpected)} unexpected: {head(unexpected)}"] if unexpected else []
        if wrong:
            shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3]]
            shapes += [f"... {len(wrong) - 3} more"] if len(wrong) > 3 else []
            detail.append(f"{len(wrong)} with other shapes (saved vs model), e.g. {', '.join(shapes)}")
        raise ValueError(f"adapter checkpoint {path} does not match the model ({'; '.join(detail)}). Was it "
                         "trained on another base model or layer range?")
    with torch.no_grad():
        for k, p in expected.items():
            p.copy_(saved[k].to(device=p.device, dtype=p.dtype))
    return config
