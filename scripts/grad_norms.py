#!/usr/bin/env python
"""Gradient norms of a saved run, per kind of parameter, on one batch of its own training data.

    python scripts/grad_norms.py runs/mini_table/runs/st_e8_r2_instr_s0 --samples 64
    python scripts/grad_norms.py runs/mini_table/runs/st_e8_r2_instr_s0 --router-grad straight_through_detached

The run directory is loaded as eval.py loads it (``mixlora.build.load_run``); the batch is its first
``--samples`` training samples in index order, built and collated as training builds them (its ``data`` config,
routing and instruction masks included). One forward and backward in train mode (dropout as configured), no
optimiser step, then the L2 norm of the gradient over each kind of parameter (the last part of its name:
``lora_a``, ``lora_b``, ``router_cfs``, ``weight`` (router and projector matrices), ``bias``), their total, and the
largest single tensors. ``--router-grad`` evaluates the same weights under another ``router_grad`` mode (e.g. to
see how much of a straight-through run's gradient flows through the router input). Prints a table, and writes
JSON with ``--json PATH``.

Which parameters get a gradient is what the run trained, as ``load_run`` rebuilds it (adapter factors, the
projector unless frozen, the routers under a learning ``router_grad``; the whole LLM under ``model.train_llm``, as
train.py sets it); ``--router-grad`` sets the routers' trainability to match the mode it names.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from mixlora.options import ROUTER_GRAD_MODES, check_choice


def grad_norms(run_dir: str | Path, samples: int = 64, router_grad: str | None = None, top: int = 10) -> dict:
    from omegaconf import OmegaConf

    from mixlora.build import load_run
    from mixlora.data.collator import TrainingCollator
    from mixlora.inject import AdapterConfig
    from mixlora.layers import MixLoRALinear
    from mixlora.train.data import build_dataset
    from mixlora.train.settings import DataSettings

    if router_grad is not None:
        check_choice("router_grad", router_grad, ROUTER_GRAD_MODES)
    stack, cfg = load_run(run_dir)  # trainability as injected and built: factors, projector, routers if learning
    model = stack.model
    if cfg.model.get("train_llm", False):
        model.llm.requires_grad_(True)  # as train.py does for full fine-tuning (no adapter then)
    mode = cfg.adapter.get("router_grad", "none") if "adapter" in cfg else "none"
    if router_grad is not None:
        mode = router_grad
        for m in model.modules():
            if isinstance(m, MixLoRALinear):
                m.router_grad = mode
                for name, p in m.named_parameters():
                    if name.startswith("router_"):
                        p.requires_grad_(mode != "none")
    data = DataSettings(**OmegaConf.to_container(cfg.data, resolve=True))
    ds, _ = build_dataset(data, stack.tokenizer, stack.image_processor, model.num_image_tokens, 0,
                          instruction_spans=model.routes_on_instruction())
    batch = TrainingCollator(stack.tokenizer.pad_token_id)([ds[i] for i in range(min(samples, len(ds)))])
    model.train()
    with model.routing(batch["routing_mask"], instruction_mask=batch.get("instruction_mask")):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
    loss.backward()
    squares: dict[str, float] = defaultdict(float)
    tensors = []
    for name, p in model.named_parameters():
        if p.grad is not None:
            norm = float(p.grad.double().norm())
            squares[name.rsplit(".", 1)[-1]] += norm ** 2
            tensors.append({"name": name, "grad_norm": norm, "weight_norm": float(p.detach().double().norm())})
    tensors.sort(key=lambda t: -t["grad_norm"])
    adapter_cfg = AdapterConfig.coerce(cfg.adapter).to_dict() if cfg.adapter.get("kind", "none") != "none" else None
    return {"run": str(run_dir), "samples": int(batch["input_ids"].shape[0]), "router_grad": mode,
            "adapter": adapter_cfg, "loss": float(loss.detach()),
            "groups": {k: v ** 0.5 for k, v in sorted(squares.items())},
            "total": sum(squares.values()) ** 0.5, "largest": tensors[:top]}


def markdown(result: dict) -> str:
    lines = [f"{result['run']}: {result['samples']} samples, router_grad={result['router_grad']}, "
             f"loss {result['loss']:.4f}", "", "| parameters | gradient norm |", "|---|---:|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in result["groups"].items()]
    lines += [f"| total | {result['total']:.4g} |", "", "| largest tensors | gradient norm | weight norm |",
              "|---|---:|---:|"]
    lines += [f"| {t['name']} | {t['grad_norm']:.4g} | {t['weight_norm']:.4g} |" for t in result["largest"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory (train.py's output_dir)")
    p.add_argument("--samples", type=int, default=64, help="training samples in the batch (default 64)")
    p.add_argument("--router-grad", default=None, help="evaluate under this router_grad mode instead of the run's")
    p.add_argument("--top", type=int, default=10, help="largest tensors to list")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    args = p.parse_args(argv)
    if not (Path(args.run) / "config.yaml").is_file():
        print(f"{args.run} is not a run directory (no config.yaml): pass a train.py output_dir", file=sys.stderr)
        return 2
    if args.samples < 1:
        print(f"--samples must be >= 1, got {args.samples}", file=sys.stderr)
        return 2
    if args.router_grad is not None:
        try:  # before loading anything
            check_choice("router_grad", args.router_grad, ROUTER_GRAD_MODES)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
    result = grad_norms(args.run, args.samples, args.router_grad, args.top)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
