"""Shared by the adapter-layer tests (test_adapters.py, test_routing_numerics.py): a seeded base nn.Linear and a
MixLoRA layer around it with non-zero B, so that the adapter path shows in every output.
"""

import torch
from torch import nn

from mixlora import MixLoRALinear


def _linear(d_in, d_out, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias)


def _mix(d_in=8, d_out=6, E=6, r=2, alpha=4.0, seed=0, **kw):
    layer = MixLoRALinear(_linear(d_in, d_out, seed), E, r, alpha, **kw)
    torch.manual_seed(seed + 1)
    nn.init.normal_(layer.lora_b)  # non-zero B so the adapter path is visible
    return layer
