"""Adapter configuration and injection into a model's linear layers.

``inject_adapters(model, config)`` replaces every ``nn.Linear`` whose leaf name is in ``config.target_modules``
(default: LLaMA's q, k, v, o, gate, up, down projections; optionally only layers in ``config.layers``) by a
``LoRALinear`` or ``MixLoRALinear`` wrapping it, never inside the vision tower, the projector or ``lm_head``,
freezes every other parameter, and returns {module name: adapter module}. Callers unfreeze what else they
train (the projector) afterwards.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from torch import nn

from .layers import LoRALinear, MixLoRALinear
from .options import (ADAPTER_KINDS, CFS_MODES, DECODE_ROUTING, ROUTER_GRAD_MODES, ROUTING_PRECISIONS, ROUTING_SOURCES,
                      ROUTING_TOKENS, check_choice, check_rank)

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Path components that are never adapted, whatever the targets say (the paper adapts the LLM only).
NEVER_ADAPT = ("vision_tower", "visual", "projector", "mm_projector", "multi_modal_projector", "lm_head")
ADAPTER_TYPES = (LoRALinear, MixLoRALinear)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.|$)")


# The released variant, stated once: these fields plus alpha = 2E. ``AdapterConfig.released`` applies them, and the
# Hydra option ``adapter=mixlora_released`` composes them (``schema/adapter_released``, mixlora.train.config).
RELEASED_MODES = dict(dropout=0.05, cfs="released", router_grad="none", routing_tokens="all",
                      routing_precision="layer", decode_routing="per_step")
RELEASED_ALPHA_PER_FACTOR = 2.0


@dataclass
class AdapterConfig:
    """What to inject and how. Defaults are the *corrected* MixLoRA (paper CFS, prompt routing, prefill reuse).

    The released behaviour is ``cfs="released", router_grad="none", routing_tokens="all",
    routing_precision="layer", decode_routing="per_step"`` with ``alpha = 2 * num_factors``
    (``AdapterConfig.released(E, r)``).

    Fields:
        kind: "lora" | "mixlora".
        rank: r (LoRA rank, or factors selected per instance).
        alpha: the update is multiplied by alpha / rank.
        dropout: adapter-input dropout.
        num_factors: E, pool size (mixlora only; must exceed rank: ``mixlora.options.check_rank``).
        cfs, router_grad, routing_tokens, routing_precision, decode_routing, routing_source: MixLoRA modes
            (``mixlora.options``).
        target_modules: leaf names of the linears to adapt.
        layers: optional [start, end) range of decoder-layer indices to adapt; None = all.
    """

    kind: str = "mixlora"
    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    num_factors: Optional[int] = 16
    cfs: str = "paper"
    router_grad: str = "none"
    routing_tokens: str = "prompt"
    routing_precision: str = "float32"
    decode_routing: str = "prefill"
    routing_source: str = "instance"
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))
    layers: Optional[list[int]] = None

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ADAPTER_KINDS)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self.target_modules = list(self.target_modules)
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"target_modules must be a non-empty list of module names, got {self.target_modules!r}")
        if self.layers is not None:
            self.layers = list(self.layers)
            if len(self.layers) != 2 or not 0 <= self.layers[0] < self.layers[1]:
                raise ValueError(f"layers must be [start, end) with 0 <= start < end, got {self.layers!r}")
        if self.kind == "mixlora":
            check_rank(self.rank, self.num_factors)
            check_choice("cfs", self.cfs, CFS_MODES)
            check_choice("router_grad", self.router_grad, ROUTER_GRAD_MODES)
            check_choice("routing_tokens", self.routing_tokens, ROUTING_TOKENS)
            check_choice("routing_precision", self.routing_precision, ROUTING_PRECISIONS)
            check_choice("decode_routing", self.decode_routing, DECODE_ROUTING)
            check_choice("routing_source", self.routing_source, ROUTING_SOURCES)
            if self.routing_source == "random" and self.router_grad != "none":
                raise ValueError("routing_source='random' uses no router, so router_grad must be 'none'")

    @classmethod
    def released(cls, num_factors: int, rank: int, **overrides: Any) -> "AdapterConfig":
        """Every behaviour of the released variant (docs/method.md#released-variant): ``RELEASED_MODES`` and
        alpha = ``RELEASED_ALPHA_PER_FACTOR`` · E."""
        values = dict(kind="mixlora", num_factors=num_factors, rank=rank,
                      alpha=RELEASED_ALPHA_PER_FACTOR * num_factors, **RELEASED_MODES)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def coerce(cls, value: Any) -> "AdapterConfig":
        """Accept an AdapterConfig, a dict or an OmegaConf node; unknown keys are an error."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            try:
                from omegaconf import OmegaConf

                value = OmegaConf.to_container(value, resolve=True)
            except Exception as exc:  # not an OmegaConf node either: report what we got
                raise TypeError(f"adapter config must be an AdapterConfig or a mapping, got {type(value).__name__}") from exc
        value = {k: v for k, v in dict(value).items() if k != "_target_"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown adapter config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def build(self, base: nn.Linear) -> nn.Module:
        """Wrap one linear according to this config."""
        if self.kind == "lora":
            return LoRALinear(base, self.rank, self.alpha, self.dropout)
        return MixLoRALinear(
            base, self.num_factors, self.rank, self.alpha, self.dropout, cfs=self.cfs,
            router_grad=self.router_grad, routing_tokens=self.routing_tokens,
            routing_precision=self.routing_precision, decode_routing=self.decode_routing,
            routing_source=self.routing_source,
        )

    def trains_routers(self) -> bool:
        return self.kind == "mixlora" and self.router_grad != "none"


def layer_index(name: str) -> Optional[int]:
    """Decoder-layer index in a module path such as ``model.layers.3.self_attn.q_proj`` (None if absent)."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def find_targets(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Linear]:
    """{name: linear} that ``config`` selects; a clear error for targets that match nothing."""
    wanted = set(config.target_modules)
    matched: dict[str, nn.Linear] = {}
    seen_leaves: set[str] = set()
    linear_leaves: set[str] = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if any(p in NEVER_ADAPT for p in parts):
            continue
        if isinstance(module, ADAPTER_TYPES):
            raise ValueError(f"{name} already holds an adapter; inject into a fresh model (or load_adapter)")
        if isinstance(module, nn.Linear):
            linear_leaves.add(parts[-1])
        if parts[-1] not in wanted:
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(f"target {name} is a {type(module).__name__}; only nn.Linear layers can be adapted")
        seen_leaves.add(parts[-1])
        if config.layers is not None:
            idx = layer_index(name)
            if idx is None or not config.layers[0] <= idx < config.layers[1]:
                continue
        matched[name] = module
    missing = sorted(wanted - seen_leaves)
    if missing:
        raise ValueError(
            f"target module(s) {missing} match no nn.Linear in the model (outside {list(NEVER_ADAPT)}). "
            f"Linear leaf names available: {sorted(linear_leaves)}"
        )
    if not matched:
        raise ValueError(f"layers={config.layers} selects none of the target modules; check the layer range")
    return matched


def inject_adapters(model: nn.Module, config: Any) -> dict[str, nn.Module]:
    """Replace the target linears of ``model`` by adapters, freeze the rest, return {name: adapter}."""
    config = AdapterConfig.coerce(config)
    targets = find_targets(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    replaced: dict[str, nn.Module] = {}
    for name, linear in targets.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        adapter = config.build(linear)
        adapter.train(linear.training)  # new modules default to training mode; keep the model's mode
        for pname, p in adapter.named_parameters():
            head = pname.split(".")[0]  # lora_a, lora_b, router_a, router_b, router_cfs or base
            p.requires_grad_(head.startswith("lora_") or (head.startswith("router_") and config.trains_routers()))
        setattr(parent, leaf, adapter)
        replaced[name] = adapter
    model.mixlora_adapter_config = config
    return replaced


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTER_TYPES)}
