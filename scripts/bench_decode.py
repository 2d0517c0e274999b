#!/usr/bin/env python
# One file on purpose: one benchmark command; its two measurements (whole generate, one adapted linear) share the
# variants, the model setup and the report; ~45 lines are its docstring.
"""Greedy decoding speed with a KV cache: frozen vs LoRA vs MixLoRA (prefill-cached vs per-step routing).

Variants, all on the same frozen weights (the adapters wrap the very same ``nn.Linear`` objects and are swapped in
before each measurement) and the same prompts:

    frozen                        no adapter (the floor)
    lora_r<r>                     LoRALinear, alpha = 2r
    mixlora_e<E>_r<r>_prefill     corrected MixLoRA; decode steps reuse the selection routed at prefill
    mixlora_e<E>_r<r>_per_step    corrected MixLoRA, but every decode step re-routes on its own token
    released_e<E>_r<r>_per_step   released MixLoRA (released CFS, unmasked routing, per-step re-routing)

Adapters sit on q, k, v, o, gate, up, down of every layer; B factors start N(0, 0.01) (not zeros) so the adapter
path is really computed and routes on real scores. Sizes:

    tiny        the tiny stack of configs/model/tiny.yaml (build_stack; HF CLIP tower of the same shape, so the
                benchmark needs no open_clip), image + text prompts through LlavaMixModel.generate
    7b_2layer   a random-init Llama with LLaMA-7B widths (hidden 4096, FFN 11008, 32 heads, vocabulary 32000) but
                2 layers, LLM only: input_ids prompts, llm.generate inside mixlora.routing

Every row of a batch is a prompt of the same fixed length (no padding), routed on all its tokens (the generation
collator's routing mask); every variant generates exactly ``--new-tokens`` tokens (min_new_tokens = max).
Each repeat times generate(new_tokens) and generate(1) (the prefill plus one step) for every variant in turn,
round-robin, so machine noise hits all alike. Reported from the medians:

    tokens/s         B * new_tokens / t(new_tokens)                    (prefill included)
    decode tokens/s  B * (new_tokens - 1) / (t(new_tokens) - t(1))     (the KV-cache decode steps alone)

Target: MixLoRA (prefill) decode tokens/s >= 0.95x LoRA. Ratios come from numbers measured in this one run.

With 7b_2layer among the sizes, a second measurement isolates one adapted linear at those widths (q/k/v/o
4096x4096, gate/up 4096x11008, down 11008x4096): one decode-step call [B, 1, d_in] after a [B, T, d_in] prefill in
the same routing context, every variant in turn, ``--layer-repeats`` times (median). Mode ``layer`` times the
whole adapted linear; mode ``adapter`` replaces its frozen matmul by a copy of that matmul's output, so only the
adapter path (and its Python) is timed, ``ADAPTER_CALLS`` times as often. The MixLoRA prefill variant is timed
with the prefill factor cache (mixlora.routing_state) and without it (every step gathers A_x, B_x from the pools),
and the two must give identical outputs. From the adapter times and the frozen decode step of the generate table
follows the decode ratio the adapter paths alone imply: (frozen step + LoRA's 14 adapters) / (frozen step +
MixLoRA's 14 adapters), which the machine's noise on the frozen matmuls does not enter.

    python scripts/bench_decode.py --out results/bench                             # CPU: decode_cpu.{md,json}
    python scripts/bench_decode.py --device cuda --dtype bf16 --out results/bench  # decode_cuda.{md,json}
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file without an installed package
    sys.path.insert(0, str(ROOT))

from mixlora.profiling import run_metadata, timed, write_result  # noqa: E402

SIZES = ("tiny", "7b_2layer")
TARGET = 0.95
ADAPTER_CALLS = 20  # adapter-only calls per --layer-repeats (each is ~1000x cheaper than the frozen matmul)
# A fixed text for the tiny stack's local BPE tokenizer: the benchmark needs token ids, not a language.
TOKENIZER_TEXT = ("describe the image in one sentence . what color is the object on the left ? answer with a single "
                  "word . how many animals are there in the picture ? the cat sits on a red mat near the window .")


@dataclass
class LLMShape:
    """A Llama's widths; ``LLAMA7B_2LAYER`` is the benchmark's 7b_2layer size."""

    hidden: int = 4096
    intermediate: int = 11008
    heads: int = 32
    layers: int = 2
    vocab: int = 32000


LLAMA7B_2LAYER = LLMShape()


def variant_configs(rank: int, factors: int) -> dict:
    """{variant name: AdapterConfig or None (frozen)} in reporting order."""
    from mixlora import AdapterConfig

    mix = dict(kind="mixlora", num_factors=factors, rank=rank, alpha=2.0 * rank, dropout=0.0)
    return {
        "frozen": None,
        f"lora_r{rank}": AdapterConfig(kind="lora", rank=rank, alpha=2.0 * rank),
        f"mixlora_e{factors}_r{rank}_prefill": AdapterConfig(**mix, decode_routing="prefill"),
        f"mixlora_e{factors}_r{rank}_per_step": AdapterConfig(**mix, decode_routing="per_step"),
        f"released_e{factors}_r{rank}_per_step": AdapterConfig.released(factors, rank, dropout=0.0),
    }


class AdapterBank:
    """Several adapter variants over one model's frozen linears; ``use(name)`` swaps a variant in.

    Each variant is injected with ``mixlora.inject_adapters`` (the training code path), its modules kept, and the
    plain linears put back, so all variants share the base weights: one model's memory for any number of them.
    """

    def __init__(self, llm: nn.Module, configs: dict, seed: int = 0):
        from mixlora.inject import inject_adapters

        self.llm = llm
        self.modules: dict[str, Optional[dict[str, nn.Module]]] = {}
        self.bases: Optional[dict[str, nn.Linear]] = None
        for name, cfg in configs.items():
            if cfg is None:
                self.modules[name] = None
                continue
            torch.manual_seed(seed)
            adapters = inject_adapters(llm, cfg)
            with torch.no_grad():
                for adapter in adapters.values():
                    adapter.lora_b.normal_(0.0, 0.01)
            self.modules[name] = adapters
            self.bases = {n: a.base for n, a in adapters.items()}
            self._install(self.bases)
        if self.bases is None:
            raise ValueError("AdapterBank needs at least one adapter variant")
        del llm.mixlora_adapter_config  # set by inject_adapters; no single variant is the model's now

    def _install(self, modules: dict[str, nn.Module]) -> None:
        for name, module in modules.items():
            parent, _, leaf = name.rpartition(".")
            setattr(self.llm.get_submodule(parent) if parent else self.llm, leaf, module)

    def use(self, name: str) -> None:
        self._install(self.modules[name] or self.bases)


@dataclass
class DecodeCase:
    """What one size measures: ``generate(n)`` returns the [B, n] new tokens for the installed variant."""

    size: str
    bank: AdapterBank
    generate: Callable[[int], torch.Tensor]
    batch: int
    prompt_len: int
    describe: dict


def random_ids(batch: int, length: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(low, high, (batch, length), generator=generator)


def tiny_case(args, device: torch.device, dtype: torch.dtype) -> DecodeCase:
    """The tiny stack (configs/model/tiny.yaml) with image + text prompts through ``LlavaMixModel.generate``."""
    from omegaconf import OmegaConf

    from mixlora.build import build_stack
    from mixlora.data.tokenizer import build_tokenizer

    cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    cfg.builder.vision_backend = "hf_clip"  # the same shape as the open_clip tower; decoding is all LLM
    tokenizer = build_tokenizer(TOKENIZER_TEXT.split(" . ") * 4, vocab_size=int(cfg.tokenizer.vocab_size))
    stack = build_stack(cfg, tokenizer)
    model = stack.model.to(device=device, dtype=dtype).eval()
    n_image = model.num_image_tokens
    prompt_len = args.prompt_len or n_image + 32
    if prompt_len < n_image + 2:
        raise ValueError(f"--prompt-len {prompt_len} is too short for the tiny stack: it needs the {n_image} image "
                         "tokens plus at least 2 text tokens")
    gen = torch.Generator().manual_seed(args.seed)
    special = max(tokenizer.all_special_ids) + 1
    ids = random_ids(args.batch, prompt_len, special, len(tokenizer), gen)
    ids[:, 1 : 1 + n_image] = model.image_token_id  # a text token, the image, then the question
    ids[:, 0] = tokenizer.bos_token_id
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    size = model.image_processor_kwargs()["image_size"]
    pixels = torch.randn(args.batch, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)

    def generate(n: int) -> torch.Tensor:
        return model.generate(ids, mask, pixels, routing_mask=mask.bool(), max_new_tokens=n, min_new_tokens=n,
                              **kwargs)

    bank = AdapterBank(model.llm, variant_configs(args.rank, args.factors), seed=args.seed)
    llm_cfg = model.llm.config
    return DecodeCase("tiny", bank, generate, args.batch, prompt_len, dict(
        model="configs/model/tiny.yaml (vision_backend=hf_clip)", hidden=llm_cfg.hidden_size,
        intermediate=llm_cfg.intermediate_size, heads=llm_cfg.num_attention_heads, layers=llm_cfg.num_hidden_layers,
        vocab=llm_cfg.vocab_size, image_tokens=n_image))


def build_llama(shape: LLMShape, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A random-init Llama of ``shape`` (untied head, as LLaMA), built directly on ``device``."""
    from mixlora.model.llm import build_llm
    from mixlora.model.tiny import tiny_llm_config

    cfg = tiny_llm_config(vocab_size=shape.vocab, hidden_size=shape.hidden, num_layers=shape.layers,
                          num_heads=shape.heads, intermediate_size=shape.intermediate, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(device):
        return build_llm(config=cfg, dtype=dtype)


def llama_case(args, device: torch.device, dtype: torch.dtype, shape: LLMShape = LLAMA7B_2LAYER,
               size: str = "7b_2layer") -> DecodeCase:
    """A Llama of ``shape`` alone, input_ids prompts, ``llm.generate`` inside ``mixlora.routing``."""
    import mixlora

    llm = build_llama(shape, device, dtype).eval()
    prompt_len = args.prompt_len or (320 if device.type == "cuda" else 64)
    gen = torch.Generator().manual_seed(args.seed)
    ids = random_ids(args.batch, prompt_len, 1, shape.vocab, gen).to(device)
    mask = torch.ones_like(ids)

    @torch.no_grad()
    def generate(n: int) -> torch.Tensor:
        with mixlora.routing(llm, mask.bool(), sequence_mask=mask.bool()):
            out = llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[:, ids.shape[1]:]

    bank = AdapterBank(llm, variant_configs(args.rank, args.factors), seed=args.seed)
    return DecodeCase(size, bank, generate, args.batch, prompt_len, dict(
        model="random-init Llama, LLM only", **asdict(shape)))


def bench_case(case: DecodeCase, new_tokens: int, repeats: int, warmup: int, device: torch.device,
               progress: bool = True) -> dict:
    """Time every variant of ``case`` round-robin; returns {"rows": [...], "ratios": {...}}."""
    from tqdm import tqdm

    if new_tokens < 2:
        raise ValueError(f"new_tokens={new_tokens} must be >= 2 (decode speed is t(n) - t(1))")
    names = list(case.bank.modules)
    times = {name: {"n": [], "1": []} for name in names}
    for rep in tqdm(range(warmup + repeats), desc=f"decode {case.size}", leave=False, disable=not progress):
        for name in names:
            case.bank.use(name)
            for key, n in (("n", new_tokens), ("1", 1)):
                out = []
                t = timed(lambda: out.append(case.generate(n)), device)
                if tuple(out[0].shape) != (case.batch, n):
                    raise RuntimeError(f"{name}: generate({n}) returned {tuple(out[0].shape)} new tokens, expected "
                                       f"{(case.batch, n)}")
                if rep >= warmup:
                    times[name][key].append(t)
    case.bank.use(names[0])
    rows = []
    for name in names:
        t_n, t_1 = statistics.median(times[name]["n"]), statistics.median(times[name]["1"])
        decode_s = t_n - t_1
        rows.append(dict(size=case.size, variant=name, generate_ms=1e3 * t_n, prefill_ms=1e3 * t_1,
                         tokens_per_s=case.batch * new_tokens / t_n,
                         decode_tokens_per_s=case.batch * (new_tokens - 1) / decode_s if decode_s > 0 else float("nan"),
                         ms_per_step=1e3 * decode_s / (new_tokens - 1)))
    return dict(rows=rows, ratios=ratios(rows))


def ratios(rows: list[dict]) -> dict:
    by = {r["variant"]: r for r in rows}
    lora = next(n for n in by if n.startswith("lora_"))
    out = {}
    for name in by:
        if name.startswith(("mixlora_", "released_")):
            for metric in ("decode_tokens_per_s", "tokens_per_s"):
                out[f"{name} / {lora} {metric.replace('_per_s', '/s').replace('_', ' ')}"] = (
                    by[name][metric] / by[lora][metric])
    return out


# ---------------------------------------------------------------- one adapted linear, one decode step
class FixedOutput(nn.Module):
    """Stands in for the frozen linear in the adapter-only timing: returns a fresh copy of a precomputed base
    output (adapters add into the base output in place), so only the adapter path is timed."""

    def __init__(self, y: torch.Tensor):
        super().__init__()
        self.y = y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.y.clone()


def layer_shapes(shape: LLMShape) -> dict[str, tuple[int, int, int]]:
    """{linear: (d_in, d_out, count per decoder layer)} of a Llama decoder layer."""
    h, f = shape.hidden, shape.intermediate
    return {"q/k/v/o": (h, h, 4), "gate/up": (h, f, 2), "down": (f, h, 1)}


def layer_variants(base: nn.Linear, rank: int, factors: int, seed: int) -> dict[str, tuple[nn.Module, bool]]:
    """{variant: (module, cache_factors)} over one frozen ``base``; the MixLoRA variants share their pools."""
    from mixlora.layers import LoRALinear, MixLoRALinear

    def seeded(make):
        torch.manual_seed(seed)
        module = make()
        with torch.no_grad():
            module.lora_b.normal_(0.0, 0.01)
        return module

    mix = dict(num_factors=factors, rank=rank, alpha=2.0 * rank)
    return {
        "frozen": (base, True),
        f"lora_r{rank}": (seeded(lambda: LoRALinear(base, rank, 2.0 * rank)), True),
        f"mixlora_e{factors}_r{rank}_prefill": (seeded(lambda: MixLoRALinear(base, **mix)), True),
        f"mixlora_e{factors}_r{rank}_prefill_nocache": (seeded(lambda: MixLoRALinear(base, **mix)), False),
        f"mixlora_e{factors}_r{rank}_per_step": (seeded(lambda: MixLoRALinear(base, **mix, decode_routing="per_step")),
                                                 True),
    }


@torch.no_grad()
def bench_layers(shape: LLMShape, batch: int, prompt_len: int, rank: int, factors: int, repeats: int,
                 device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    """{"shapes": {linear: {d_in, d_out, count, layer: {variant: s}, adapter: {variant: s}}}, "per_step": {mode:
    {variant: s}}}: median seconds of one decode-step call per variant (module docstring), interleaved."""
    from contextlib import ExitStack

    import mixlora
    from mixlora.layers import MixLoRALinear

    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, prompt_len, dtype=torch.bool, device=device)
    shapes = {}
    for linear, (d_in, d_out, count) in layer_shapes(shape).items():
        torch.manual_seed(seed)
        base = nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype).requires_grad_(False)
        prompt = torch.randn(batch, prompt_len, d_in, generator=gen).to(device, dtype)
        step = torch.randn(batch, 1, d_in, generator=gen).to(device, dtype)
        entry = dict(d_in=d_in, d_out=d_out, count=count)
        for mode, calls, warm in (("layer", repeats, 2), ("adapter", ADAPTER_CALLS * repeats, 20)):
            variants = layer_variants(base, rank, factors, seed)
            with ExitStack() as stack:
                for module, cache in variants.values():
                    if isinstance(module, MixLoRALinear):
                        stack.enter_context(mixlora.routing(module, mask, cache_factors=cache))
                        module(prompt)  # the prefill routes (and, with the cache, keeps the gathered factors)
                if mode == "adapter":
                    fixed = FixedOutput(base(step))
                    variants["frozen"] = (fixed, True)
                    for module, _ in variants.values():
                        if module is not fixed:
                            module.base = fixed
                names = list(variants)
                outs = {name: variants[name][0](step) for name in names}
                cached, uncached = (outs[f"mixlora_e{factors}_r{rank}_prefill{s}"] for s in ("", "_nocache"))
                if not torch.equal(cached, uncached):
                    raise RuntimeError(f"{linear}: the prefill factor cache changed the layer output")
                times = {name: [] for name in names}
                for i in range(warm + calls):
                    for name in names:
                        t = timed(lambda: variants[name][0](step), device)
                        if i >= warm:
                            times[name].append(t)
            entry[mode] = {name: statistics.median(ts) for name, ts in times.items()}
        shapes[linear] = entry
    per_step = {mode: {name: shape.layers * sum(e["count"] * e[mode][name] for e in shapes.values())
                       for name in next(iter(shapes.values()))[mode]} for mode in ("layer", "adapter")}
    return dict(shapes=shapes, per_step=per_step, batch=batch, prompt_len=prompt_len, repeats=repeats,
                adapter_calls=ADAPTER_CALLS * repeats, layers=shape.layers)


def implied_ratio(layer_result: dict, frozen_step_s: float, lora: str, mix: str) -> float:
    """(frozen step + LoRA's adapter time) / (frozen step + MixLoRA's): decode tokens/s of ``mix`` over ``lora``
    as the adapter-only times imply, the frozen step taken from the generate measurement."""
    adapter = layer_result["per_step"]["adapter"]
    return (frozen_step_s + adapter[lora] - adapter["frozen"]) / (frozen_step_s + adapter[mix] - adapter["frozen"])


def layer_markdown(layer: dict, rank: int, factors: int) -> list[str]:
    names = list(layer["per_step"]["layer"])
    lora, mix = f"lora_r{rank}", f"mixlora_e{factors}_r{rank}_prefill"
    lines = [f"## One adapted linear, one decode step (7b_2layer widths, batch {layer['batch']}, after a "
             f"{layer['prompt_len']}-token prefill)", "",
             f"Median ms of one call [B, 1, d_in], variants interleaved: `layer` = the adapted linear "
             f"({layer['repeats']} calls each), `adapter` = its adapter path alone, the frozen matmul replaced by a "
             f"copy of its output ({layer['adapter_calls']} calls each; `frozen` is then that copy). "
             "`_nocache`: the prefill selection, but A_x, B_x gathered from the pools at every step.", "",
             "| linear | mode | " + " | ".join(names) + " | LoRA / MixLoRA prefill time |",
             "|---|---|" + "---:|" * (len(names) + 1)]
    rows = [(f"{k} ({e['d_in']}x{e['d_out']})", e) for k, e in layer["shapes"].items()]
    rows.append((f"per decode step ({layer['layers']} layers x 7 linears)", layer["per_step"]))
    for label, e in rows:
        for mode in ("layer", "adapter"):
            t = e[mode]
            lines.append(f"| {label} | {mode} | " + " | ".join(f"{1e3 * t[n]:.3f}" for n in names)
                         + f" | {t[lora] / t[mix]:.3f} |")
    if "implied_ratio" in layer:
        lines += ["", f"Implied {mix} / {lora} decode tokens/s from the adapter-only times and the frozen decode step "
                      f"of the 7b_2layer table ({1e3 * layer['frozen_step_s']:.1f} ms): "
                      f"**{layer['implied_ratio']:.3f}** (without the factor cache: "
                      f"{layer['implied_ratio_nocache']:.3f})."]
    return lines + [""]


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"# Decode benchmark ({result['device']}, {a['dtype']}, batch {a['batch']}, {a['new_tokens']} new tokens, "
             f"E={a['factors']}, r={a['rank']})", "",
             f"Command: `{result['command']}`  ",
             f"Date: {result['date']}, git {result['git']}, torch {result['torch']}, transformers "
             f"{result['transformers']}, {result['machine']}  ",
             "Greedy generation with a KV cache; median of "
             f"{a['repeats']} round-robin repeats. Decode tokens/s = B (n - 1) / (t(n) - t(1)).  ",
             f"Threads: torch {result.get('threads', '?')} (OMP_NUM_THREADS={result.get('omp_threads') or 'unset'}).",
             ""]
    for size, info in result["sizes"].items():
        lines += [f"## {size}: {info['describe']['model']}", "",
                  "shape: " + ", ".join(f"{k} {v}" for k, v in info["describe"].items() if k != "model")
                  + f", prompt {info['prompt_len']} tokens", "",
                  "| variant | generate ms | prefill+1 ms | ms / decode step | decode tokens/s | tokens/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in info["rows"]:
            lines.append(f"| {r['variant']} | {r['generate_ms']:.1f} | {r['prefill_ms']:.1f} | {r['ms_per_step']:.2f} "
                         f"| {r['decode_tokens_per_s']:,.0f} | {r['tokens_per_s']:,.0f} |")
        lines += ["", "| ratio | value | target |", "|---|---:|---|"]
        for k, v in info["ratios"].items():
            target = ""
            if "_prefill" in k and "decode" in k:
                target = f">= {TARGET:.2f} {'ok' if v >= TARGET else 'MISSED'}"
            lines.append(f"| {k} | {v:.3f} | {target} |")
        lines.append("")
    if result.get("layer"):
        lines += layer_markdown(result["layer"], a["rank"], a["factors"])
    if result.get("note"):
        lines.append(result["note"])
    return "\n".join(lines).rstrip() + "\n"


def run_sizes(args, device: torch.device, dtype: torch.dtype, shapes: Optional[dict] = None,
              progress: bool = True) -> dict:
    """{size: {describe, prompt_len, rows, ratios}} for the comma-separated ``args.sizes``; ``shapes`` maps a size
    name to the LLMShape to use instead of 7B widths (gpu_check's reduced CPU run)."""
    out = {}
    for size in args.sizes.split(","):
        if size == "tiny":
            case = tiny_case(args, device, dtype)
        else:
            case = llama_case(args, device, dtype, (shapes or {}).get(size, LLAMA7B_2LAYER), size)
        measured = bench_case(case, args.new_tokens, args.repeats, args.warmup, device, progress)
        out[size] = dict(describe=case.describe, prompt_len=case.prompt_len, **measured)
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row (min_new_tokens = max)")
    p.add_argument("--prompt-len", type=int, default=None,
                   help="prompt tokens per row (default: tiny 64 image + 32 text; 7b_2layer 320 on CUDA, 64 on CPU)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--factors", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--layer-repeats", type=int, default=30,
                   help="calls per variant in the one-linear measurement at 7b_2layer widths (run when 7b_2layer is "
                        f"among the sizes; the adapter-only mode makes {ADAPTER_CALLS}x as many); 0 = skip it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--out", default=None, help="folder for decode_<device>.json/.md (printed either way)")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Bad values stop here with argparse's message (exit status 2)."""
    bad = [s for s in args.sizes.split(",") if s not in SIZES]
    if bad or not args.sizes:
        p.error(f"--sizes {args.sizes!r}: unknown size(s) {bad}; choose from {', '.join(SIZES)}")
    for name in ("batch", "repeats", "rank", "factors"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.new_tokens < 2:
        p.error(f"--new-tokens must be >= 2 (decode speed is measured as t(n) - t(1)), got {args.new_tokens}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.layer_repeats < 0:
        p.error(f"--layer-repeats must be >= 0, got {args.layer_repeats}")
    if args.rank >= args.factors:
        p.error(f"--rank {args.rank} must be smaller than --factors {args.factors}")
    if args.prompt_len is not None and args.prompt_len < 2:
        p.error(f"--prompt-len must be >= 2, got {args.prompt_len}")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"--device {args.device!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device!r}: use cpu or cuda")


def main(argv=None) -> dict:
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        sizes = run_sizes(args, device, dtype)
    except ValueError as err:
        p.error(str(err))
    layer = None
    if "7b_2layer" in sizes and args.layer_repeats:
        prompt_len = sizes["7b_2layer"]["prompt_len"]
        layer = bench_layers(LLAMA7B_2LAYER, args.batch, prompt_len, args.rank, args.factors, args.layer_repeats,
                             device, dtype, args.seed)
        steps = {r["variant"]: r["ms_per_step"] / 1e3 for r in sizes["7b_2layer"]["rows"]}
        lora, mix = f"lora_r{args.rank}", f"mixlora_e{args.factors}_r{args.rank}_prefill"
        layer.update(frozen_step_s=steps["frozen"], implied_ratio=implied_ratio(layer, steps["frozen"], lora, mix),
                     implied_ratio_nocache=implied_ratio(layer, steps["frozen"], lora, mix + "_nocache"))
    note = ("7b_2layer has 2 decoder layers but a full 32000-row LM head, so the head weighs more in a step than "
            "in the 32-layer model and dilutes every adapter's share of the step time.")
    result = dict(**run_metadata(device, argv, script=__file__), args=vars(args), sizes=sizes, layer=layer,
                  threads=torch.get_num_threads(), omp_threads=os.environ.get("OMP_NUM_THREADS"), note=note)
    text = markdown(result)
    print(text)
    if args.out:
        print(f"wrote {write_result(args.out, f'decode_{device.type}', result, text)} and .md", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
