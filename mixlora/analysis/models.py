"""The model under analysis: a trained run directory, or a fresh stack from a model config with a LoRA / MixLoRA
adapter; its adapted layers; and the scripts' shared command-line options for choosing it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from mixlora.train.config import shipped_config_dir

MODEL_CONFIG_DIR = shipped_config_dir() / "model"
MIXLORA_VARIANTS = ("corrected", "released")


# ---------------------------------------------------------------------------------------------- model under analysis
def adapter_config(kind: str, rank: int, num_factors: Optional[int] = None, alpha: Optional[float] = None,
                   variant: str = "corrected", routing_source: str = "instance"):
    """An ``AdapterConfig`` for a fresh model: LoRA(r), or MixLoRA(E, r) in the corrected or released variant,
    routing on each instance or (``routing_source="task"``) on its task's definition.

    ``alpha`` defaults to 2r for LoRA and corrected MixLoRA (multiplier 2) and to 2E for released MixLoRA.
    """
    from mixlora.inject import AdapterConfig
    from mixlora.options import ADAPTER_KINDS, check_choice

    check_choice("adapter", kind, ADAPTER_KINDS)
    check_choice("variant", variant, MIXLORA_VARIANTS)
    if kind == "lora":
        if routing_source != "instance":
            raise ValueError(f"routing_source={routing_source!r} needs a MixLoRA adapter (LoRA does not route)")
        return AdapterConfig(kind="lora", rank=rank, alpha=alpha if alpha is not None else 2.0 * rank,
                             num_factors=None)
    if num_factors is None:
        raise ValueError("MixLoRA needs num_factors (E), e.g. --num-factors 8")
    if variant == "released":
        extra = {} if alpha is None else {"alpha": alpha}
        return AdapterConfig.released(num_factors, rank, routing_source=routing_source, **extra)
    return AdapterConfig(kind="mixlora", rank=rank, num_factors=num_factors,
                         alpha=alpha if alpha is not None else 2.0 * rank, routing_source=routing_source)


def model_config_path(model: str) -> Path:
    """``tiny`` -> configs/model/tiny.yaml; an existing .yaml path is used as is."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = MODEL_CONFIG_DIR / f"{model}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"model config {model!r} not found: use one of {known} or a path to a model .yaml")
    return candidate


def fresh_stack(model: str, adapter: Any, corpus_files: Sequence[str | Path], device: str = "cpu"):
    """Build the stack of a model config (``tiny`` or a .yaml path) and inject ``adapter`` into its LLM.

    The tokenizer of a ``local_bpe`` config is trained on ``corpus_files`` (the training JSON), as training does.
    """
    from omegaconf import OmegaConf

    from mixlora.build import build_stack, build_tokenizer_from_config
    from mixlora.inject import inject_adapters

    cfg = OmegaConf.load(model_config_path(model))
    tokenizer = build_tokenizer_from_config(cfg.tokenizer, list(corpus_files))
    stack = build_stack(cfg, tokenizer)
    inject_adapters(stack.model.llm, adapter)
    stack.model.to(device)
    stack.model.eval()
    return stack


def randomize_lora_b(llm, std: float, seed: int = 0) -> int:
    """Draw every adapter's B (``lora_b``) from N(0, std²) with a seeded generator; returns how many modules.

    A fresh adapter has B = 0, which makes every gradient w.r.t. A exactly zero (∂L/∂A = Bᵀ(...)), so the
    interference of A is undefined; a random B stands in for a trained one in smoke runs.
    """
    import torch

    from mixlora.inject import adapter_modules

    if not std > 0:
        raise ValueError(f"b_init_std must be > 0, got {std!r}")
    gen = torch.Generator().manual_seed(seed)
    modules = adapter_modules(llm)
    with torch.no_grad():
        for _, module in sorted(modules.items()):
            b = module.lora_b
            b.copy_((torch.randn(b.shape, generator=gen) * std).to(device=b.device, dtype=b.dtype))
    return len(modules)


def adapted_layers(llm) -> list[int]:
    """Sorted decoder-layer indices that hold at least one adapter."""
    from mixlora.inject import adapter_modules, layer_index

    return sorted({i for i in (layer_index(n) for n in adapter_modules(llm)) if i is not None})


def resolve_layers(spec: str | Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """Layer indices from ``"0,-1"``-style specs: non-negative values are decoder-layer indices, negative ones
    count from the end of ``available`` (the adapted layers); ``None`` = first, middle and last adapted layer
    (0, 15, 31 for a 32-layer model, the paper's t-SNE layers)."""
    available = sorted(available)
    if not available:
        raise ValueError("the model holds no adapters: inject LoRA/MixLoRA first (or pass a run directory)")
    if spec is None:
        return sorted({available[0], available[(len(available) - 1) // 2], available[-1]})
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    layers = []
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"layer {item!r} is not an integer; use e.g. --layers 0,-1") from None
        if value < 0:
            if -value > len(available):
                raise ValueError(f"layer {value} is out of range: only {len(available)} adapted layers {available}")
            value = available[value]
        if value not in available:
            raise ValueError(f"layer {value} holds no adapter; adapted layers: {available}")
        if value not in layers:
            layers.append(value)
    if not layers:
        raise ValueError("no layers given; use e.g. --layers 0,-1")
    return sorted(layers)


# ---------------------------------------------------------------------------------------------- shared CLI
def add_model_arguments(parser, adapters: Sequence[str] = ("lora", "mixlora")) -> None:
    """The scripts' model options: ``--run RUN_DIR`` or ``--model NAME`` with a fresh adapter."""
    group = parser.add_argument_group("model (a trained run, or a fresh model from a config)")
    which = group.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory written by train.py (config.yaml, tokenizer/, adapter, projector)")
    which.add_argument("--model", help="model config name in configs/model/ (e.g. tiny) or a .yaml path; builds a "
                                       "fresh model and injects the adapter below")
    group.add_argument("--adapter", choices=list(adapters), default=adapters[-1], help="adapter of a fresh --model")
    group.add_argument("--rank", type=int, default=4, help="r (LoRA rank / factors selected per instance)")
    group.add_argument("--num-factors", type=int, default=8, help="E, MixLoRA pool size")
    group.add_argument("--alpha", type=float, default=None,
                       help="default 2r (LoRA, corrected MixLoRA) or 2E (released)")
    group.add_argument("--variant", choices=list(MIXLORA_VARIANTS), default="corrected",
                       help="MixLoRA behaviour of a fresh --model (mixlora.AdapterConfig / .released)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def stack_from_args(args, corpus_files: Sequence[str | Path]):
    """The Stack that ``add_model_arguments`` options describe (a run, or a fresh model + adapter)."""
    if args.run:
        from mixlora.build import load_run

        stack, _ = load_run(args.run, device=args.device)
        return stack
    config = adapter_config(args.adapter, args.rank, args.num_factors if args.adapter == "mixlora" else None,
                            args.alpha, args.variant, getattr(args, "routing_source", "instance"))
    return fresh_stack(args.model, config, corpus_files, device=args.device)


def parse_list(text: Optional[str]) -> Optional[list[str]]:
    """``"a,b, c"`` -> ["a", "b", "c"]; None stays None."""
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]
