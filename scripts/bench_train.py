#!/usr/bin/env python
"""Training throughput and memory of the tiny stack: frozen LLM vs LoRA r vs MixLoRA E/r, side by side.

Every variant runs the training step of ``train.py`` (``mixlora.train.backend.PlainBackend``: forward and
backward inside the routing context, AdamW update) on the same micro-batches from the synthetic suite:

    none               no adapter: only the projector trains (the frozen-LLM floor)
    lora_r<r>          LoRALinear, alpha = 2r
    mixlora_e<E>_r<r>  corrected MixLoRA (paper CFS, prompt routing), alpha = 2r
    released_e<E>_r<r> released MixLoRA (released CFS, unmasked routing), alpha = 2E

Dropout is 0 in every variant (the same work per step); the adapters start from seed 0.

Time: median over ``--steps`` of one optimiser step, variants interleaved round-robin so machine noise hits all
alike; tokens/s = real tokens of the batch (image positions included) / median step time.
Memory: on CUDA, the peak allocated during a step above the idle level; on CPU (no allocator statistics), the
bytes of activations saved for backward during the forward (parameters excluded, storages counted once), which
is what a step keeps alive, plus the optimiser state. Target: MixLoRA throughput >= 0.9x LoRA at equal r.

    python scripts/bench_train.py --out results/bench        # writes results/bench/train_<device>.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mixlora.profiling import run_metadata, write_result

def build_variants(args, tokenizer, model_cfg, device, autocast_dtype):
    """{name: (model, backend, trainable parameter count)}; the backend is train.py's single-process one."""
    from mixlora import AdapterConfig, inject_adapters
    from mixlora.build import build_stack
    from mixlora.train.backend import PlainBackend

    specs = {"none": None,
             f"lora_r{args.rank}": AdapterConfig(kind="lora", rank=args.rank, alpha=2.0 * args.rank),
             f"mixlora_e{args.factors}_r{args.rank}": AdapterConfig(kind="mixlora", num_factors=args.factors,
                                                                    rank=args.rank, alpha=2.0 * args.rank),
             f"released_e{args.factors}_r{args.rank}": AdapterConfig.released(args.factors, args.rank, dropout=0.0)}
    variants = {}
    for name, adapter in specs.items():
        stack = build_stack(model_cfg, tokenizer)
        torch.manual_seed(0)
        if adapter is not None:
            inject_adapters(stack.model.llm, adapter)
        model = stack.model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        backend = PlainBackend(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                               accumulation=1, max_grad_norm=1.0, autocast_dtype=autocast_dtype, device=device)
        variants[name] = (model, backend, sum(p.numel() for p in params))
    return variants, stack.image_processor


def step(backend, batch, device):
    """One optimiser step exactly as mixlora.train.loop runs it (accumulation 1)."""
    from mixlora.train.loop import to_device

    model = backend.module
    inputs = to_device(batch, device)
    with model.routing(batch["routing_mask"].to(device)):
        with backend.autocast():
            loss = backend.forward(**inputs).loss
        backend.backward(loss)
    backend.step()


def timed_step(backend, batch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step(backend, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def saved_activation_bytes(model, batch, device) -> int:
    from mixlora.profiling import saved_activations
    from mixlora.train.loop import to_device

    with model.routing(batch["routing_mask"].to(device)):
        with saved_activations(model) as storages:
            loss = model(**to_device(batch, device)).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def cuda_peak_bytes(backend, batch, device) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    idle = torch.cuda.memory_allocated()
    step(backend, batch, device)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - idle


def optimizer_state_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"# Training benchmark: tiny stack ({result['device']}, {result['precision']}, micro-batch {a['batch']}, "
             f"E={a['factors']}, r={a['rank']})", "",
             f"Command: `{result['command']}`  ", f"Date: {result['date']}, git {result['git']}, torch {result['torch']}, "
             f"{result['machine']}  ", f"Tokens per step: {result['tokens_per_step']} (real tokens, image positions "
             f"included; mean sequence {result['mean_length']:.0f})  ", f"Memory: {result['memory_metric']}", "",
             "| variant | trainable params | step ms (median) | tokens/s | vs LoRA | memory MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['trainable']:,} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['vs_lora']:.3f} | {r['memory_mib']:.2f} |")
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    for k, v in result["ratios"].items():
        lines.append(f"| {k} | {v:.3f} | >= 0.90 {'ok' if v >= 0.9 else 'MISSED'} |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/synthetic", help="synthetic suite folder (generated if missing)")
    p.add_argument("--model", default="configs/model/tiny.yaml", help="model config")
    p.add_argument("--batch", type=int, default=8, help="samples per step (the default train.py batch)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--factors", type=int, default=8)
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="folder for train_<device>.json/.md (printed either way)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    from omegaconf import OmegaConf

    from mixlora.build import build_tokenizer_from_config
    from mixlora.data.collator import TrainingCollator
    from mixlora.data.dataset import ConversationDataset, LengthGroupedBatchSampler
    from mixlora.train.data import ensure_synthetic
    from mixlora.train.settings import DataSettings

    data = DataSettings(annotations=str(Path(args.data) / "train.json"), image_folder=str(Path(args.data) / "images"),
                        max_length=256, generate={"seed": 0})
    ensure_synthetic(data)
    model_cfg = OmegaConf.load(args.model)
    tokenizer = build_tokenizer_from_config(model_cfg.tokenizer, [data.annotations])
    variants, processor = build_variants(args, tokenizer, model_cfg, device, autocast_dtype)
    num_image_tokens = next(iter(variants.values()))[0].num_image_tokens
    ds = ConversationDataset(data.annotations, tokenizer, processor, num_image_tokens, image_folder=data.image_folder,
                             max_length=data.max_length)
    collate = TrainingCollator(tokenizer.pad_token_id)
    sampler = LengthGroupedBatchSampler(ds.lengths, args.batch, seed=0, drop_last=True)
    index_lists = list(sampler)[: args.warmup + args.steps]
    batches = [collate([ds[i] for i in idx]) for idx in index_lists]
    tokens = [int(b["attention_mask"].sum()) for b in batches]

    memory = {}
    for name, (model, backend, _) in variants.items():
        if device.type == "cuda":
            memory[name] = cuda_peak_bytes(backend, batches[0], device)
        else:
            memory[name] = saved_activation_bytes(model, batches[0], device)
    times = {name: [] for name in variants}
    for i, batch in enumerate(tqdm(batches, desc="steps (all variants)")):
        for name, (_, backend, _) in variants.items():
            t = timed_step(backend, batch, device)
            if i >= args.warmup:
                times[name].append(t / tokens[i])  # seconds per token: batches differ in length
    if device.type != "cuda":
        for name, (_, backend, _) in variants.items():
            memory[name] += optimizer_state_bytes(backend.optimizer)
    mean_tokens = statistics.mean(tokens[args.warmup:])
    lora = f"lora_r{args.rank}"
    rows = []
    for name, (_, _, trainable) in variants.items():
        per_token = statistics.median(times[name])
        rows.append(dict(variant=name, trainable=trainable, step_ms=1e3 * per_token * mean_tokens,
                         tokens_per_s=1.0 / per_token, memory_mib=memory[name] / 2**20))
    by = {r["variant"]: r for r in rows}
    for r in rows:
        r["vs_lora"] = r["tokens_per_s"] / by[lora]["tokens_per_s"]
    ratios = {f"{name} / {lora} tokens/s": by[name]["vs_lora"] for name in by if name.startswith(("mixlora", "released"))}
    result = dict(
        **run_metadata(device, argv, script=__file__), precision="bf16 autocast" if autocast_dtype else "fp32",
        memory_metric=("peak allocated during one training step above idle (torch.cuda.max_memory_allocated)"
                       if device.type == "cuda" else
                       "CPU has no allocator statistics: activations saved for backward during the forward "
                       "(parameters excluded, storages counted once) + AdamW state; not a process RSS"),
        tokens_per_step=round(mean_tokens), mean_length=mean_tokens / args.batch, args=vars(args), rows=rows,
        ratios=ratios,
        note=("Timings interleave the variants step by step; on a shared CPU, background load still adds noise "
              "(compare ratios from the same run only)." if device.type == "cpu" else ""))
    text = markdown(result)
    print(text)
    if args.out:
        kind = "cuda" if device.type == "cuda" else "cpu"
        print(f"wrote {write_result(args.out, f'train_{kind}', result, text)} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
