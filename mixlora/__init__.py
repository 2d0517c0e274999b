"""MixLoRA: conditional mixture of rank-one LoRA factors (Shen et al., ACL 2024, arXiv 2402.15896).

Public API: the adapter layers, the routing context, injection and adapter checkpoints. Imported lazily so that
torch-free tools (``python -m mixlora.scoring.score``) start fast.
"""

import importlib

_EXPORTS = {
    "AdapterConfig": "inject",
    "adapter_modules": "inject",
    "inject_adapters": "inject",
    "LoRALinear": "layers",
    "MixLoRALinear": "layers",
    "Selection": "layers",
    "last_selections": "routing_state",
    "routing": "routing_state",
    "adapter_state_dict": "checkpoint",
    "load_adapter": "checkpoint",
    "read_adapter_config": "checkpoint",
    "save_adapter": "checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'mixlora' has no attribute {name!r}")


def __dir__():
    return __all__
