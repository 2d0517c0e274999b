"""MixLoRA: conditional mixture of rank-one LoRA factors (Shen et al., ACL 2024, arXiv 2402.15896).

Public API: the adapter layers, the routing context, injection and adapter checkpoints.
"""

from .checkpoint import adapter_state_dict, load_adapter, read_adapter_config, save_adapter
from .inject import AdapterConfig, adapter_modules, inject_adapters
from .layers import LoRALinear, MixLoRALinear, Selection
from .routing import last_selections, routing

__all__ = [
    "AdapterConfig",
    "LoRALinear",
    "MixLoRALinear",
    "Selection",
    "adapter_modules",
    "adapter_state_dict",
    "inject_adapters",
    "last_selections",
    "load_adapter",
    "read_adapter_config",
    "routing",
    "save_adapter",
]
