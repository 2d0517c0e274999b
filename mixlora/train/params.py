"""Parameter counts of a LlavaMixModel split into adapter pools, routers, projector and frozen parts.

Counts use ``ds_numel`` when DeepSpeed ZeRO-3 has partitioned a parameter (its local ``numel()`` is then 0),
so the numbers are those of the whole model on every rank.
"""

from __future__ import annotations

from torch import nn

from mixlora.inject import adapter_modules

PARTS = ("pools", "routers", "projector", "llm", "vision")


def _numel(p: nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


def _part(name: str, adapter_prefixes: tuple[str, ...]) -> str:
    if name.startswith("projector."):
        return "projector"
    if name.startswith("vision_tower."):
        return "vision"
    if name.startswith("llm."):
        for prefix in adapter_prefixes:
            if name.startswith(prefix):
                leaf = name[len(prefix):]
                if leaf.startswith("lora_"):
                    return "pools"
                if leaf.startswith("router_"):
                    return "routers"
        return "llm"
    raise ValueError(f"parameter {name!r} is outside vision_tower / projector / llm; is this a LlavaMixModel?")


def count_parameters(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{part: {"total": n, "trainable": n}}`` for parts pools (LoRA/MixLoRA factors), routers (MixLoRA
    routers and CFS weights), projector, llm (frozen base LLM incl. embeddings and lm_head), vision, plus
    ``"all"``. ``model`` is a LlavaMixModel (parameter names start with vision_tower./projector./llm.)."""
    prefixes = tuple(f"llm.{n}." for n in adapter_modules(model.llm))
    counts = {part: {"total": 0, "trainable": 0} for part in (*PARTS, "all")}
    for name, p in model.named_parameters():
        part = _part(name, prefixes)
        n = _numel(p)
        for key in (part, "all"):
            counts[key]["total"] += n
            counts[key]["trainable"] += n if p.requires_grad else 0
    return counts


def format_counts(counts: dict[str, dict[str, int]], router_grad: str | None = None) -> str:
    """One line: trainable of total, then the split into pools, routers, projector."""
    a = counts["all"]
    share = 100.0 * a["trainable"] / max(1, a["total"])
    routers = counts["routers"]
    if routers["total"] and not routers["trainable"]:
        why = f" (router_grad={router_grad}: no gradient)" if router_grad else ""
        router_text = f"routers 0 trainable of {routers['total']:,} frozen{why}"
    else:
        router_text = f"routers {routers['trainable']:,}"
    proj = counts["projector"]
    proj_text = f"projector {proj['trainable']:,}" + ("" if proj["trainable"] or not proj["total"] else " (frozen)")
    return (f"trainable {a['trainable']:,} of {a['total']:,} ({share:.2f}%): pools {counts['pools']['trainable']:,}"
            f" · {router_text} · {proj_text}")
