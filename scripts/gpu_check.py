#!/usr/bin/env python
# One file on purpose: sections a-d are one prepared device run sharing its timing, memory and report helpers.
"""One prepared GPU check: adapter layer, training, decoding and a real-weights smoke run, in one command.

    python scripts/gpu_check.py --device cuda --out results/bench     # an estimated ~5 min on one H200 (scripts/gpu_check.sh)
    python scripts/gpu_check.py --device cpu --out /tmp/check         # the same code at toy sizes, < 1 min

Sections (``--sections a,b,c,d``); each runs in its own try block, so a failing section is recorded with its error
text and the others still run. The result files are rewritten after every section (a run cut short keeps what
it measured): ``OUT/gpu_check_<device>.{json,md}``.

  a  adapter layer at LLaMA-7B shapes (4096x4096, 4096x11008), bf16: frozen / LoRA / MixLoRA per ``cfs`` /
     the released dense ΔW; fwd+bwd time and peak memory (scripts/bench_adapters.py's functions)
  b  training steps of a Llama with LLaMA-7B widths (hidden 4096, FFN 11008, 32 heads, vocabulary 32000) and
     ``--train-layers`` layers, sequences of ``--seq`` tokens (the paper's 2048: a text prefix, 256 emulated
     image positions, the rest of the prompt, then a supervised answer; the routing mask covers the prompt as
     the training collator's does), gradient checkpointing, micro batch ``--micro-batch``, bf16.
     LoRA r4 vs MixLoRA E16/r4 (corrected and released), under the plain backend (bf16 frozen weights, fp32
     trainable master weights, bf16 autocast: train.py's single-process setup) and DeepSpeed ZeRO-2 / ZeRO-3
     on one process (mixlora.distributed.DeepSpeedBackend). ZeRO runs on CUDA only unless --zero-on-cpu (on
     CPU the first start compiles DeepSpeed's communication op); on CPU its configs are still built.
  c  greedy decoding with a KV cache at batch 8: LoRA vs MixLoRA prefill-cached vs per-step routing
     (scripts/bench_decode.py's functions; the 7b_2layer and tiny sizes)
  d  the SmolLM2 stack (configs/model/smollm2_clip.yaml, real SmolLM2-135M weights): a few bf16 training steps
     with train.py and an evaluation with eval.py, as subprocesses; needs ``--smollm2-dir DIR`` prepared by
     ``python scripts/prepare_smollm2.py --out DIR`` (skipped, with the reason, when it is missing)

``--device cpu`` runs every section at toy sizes (widths 64-128, short sequences, one repeat): a check of the code,
not a measurement. Exit status: 0 when every section passed or was skipped, 1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from argparse import Namespace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file without an installed package
    sys.path.insert(0, str(ROOT))

from mixlora.profiling import run_metadata, saved_activations, timed, write_result  # noqa: E402

SECTIONS = {"a": "adapter layer at LLaMA-7B shapes", "b": "training throughput and memory at 7B widths",
            "c": "decode tokens/s", "d": "SmolLM2 stack: train.py + eval.py"}
ZERO_STAGES = (2, 3)


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package); once per process."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing it: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else n / 2**20


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ============================================================================================ a: adapter layer
def section_a(args, device: torch.device) -> dict:
    bench = load_script("bench_adapters")
    if device.type == "cuda":
        argv = ["--device", "cuda", "--dtype", "bf16", "--repeats", str(args.repeats)]
    else:
        argv = ["--device", "cpu", "--dtype", "fp32", "--shapes", "64x64,64x176", "--batch", "2", "--seq", "16",
                "--repeats", "1", "--warmup", "1"]
    result = bench.main(argv)
    keep = ("command", "args", "memory_metric", "rows", "ratios")
    return {k: result[k] for k in keep} | {"markdown": bench.markdown(result)}


# ============================================================================================ b: training
class LLMOnly(nn.Module):
    """A causal LM behind the interface the training backends and loop use (``routing``, ``forward(...).loss``,
    ``gradient_checkpointing_enable``): LlavaMixModel's own methods, without the vision tower and projector."""

    from mixlora.model.llava import LlavaMixModel as _Llava

    routing = _Llava.routing
    task_routed = _Llava.task_routed
    gradient_checkpointing_enable = _Llava.gradient_checkpointing_enable
    del _Llava

    def __init__(self, llm: nn.Module):
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False)


def training_batch(batch: int, seq: int, image_positions: int, vocab: int, seed: int = 0) -> dict:
    """[B, seq] token ids laid out as a LLaVA training sample (no padding: every row is ``seq`` real tokens):

        text prefix (system prompt + "USER:") | ``image_positions`` image positions | question | answer

    The answer (labels; everything before it is IGNORE_INDEX) takes the last 1/8 to 1/4 of the row, a different
    length per row, and the routing mask is every position before the first label, i.e. the whole prompt with
    the image positions, as ``mixlora.data.collator.TrainingCollator`` builds it. The image positions hold
    ordinary token ids: this LLM-only model has no vision tower, and the compute is the same.
    """
    from mixlora.constants import IGNORE_INDEX

    prefix = min(35, seq // 8)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=gen)
    labels = torch.full_like(ids, IGNORE_INDEX)
    routing_mask = torch.zeros(batch, seq, dtype=torch.bool)
    prompts = []
    for b in range(batch):
        answer = seq // 8 + (b * (seq // 8)) // max(1, batch - 1)
        prompt = seq - answer
        if prompt < prefix + image_positions + 1:
            raise ValueError(f"--seq {seq} is too short for {image_positions} image positions, a {prefix}-token "
                             f"prefix, a question and a {answer}-token answer")
        labels[b, prompt:] = ids[b, prompt:]
        routing_mask[b, :prompt] = True
        prompts.append(prompt)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, routing_mask=routing_mask,
                layout=dict(prefix=prefix, image_positions=image_positions, prompt_lengths=prompts, seq=seq))


def train_variants(rank: int, factors: int) -> dict:
    from mixlora import AdapterConfig

    return {f"lora_r{rank}": AdapterConfig(kind="lora", rank=rank, alpha=2.0 * rank),
            f"mixlora_e{factors}_r{rank}": AdapterConfig(kind="mixlora", num_factors=factors, rank=rank,
                                                          alpha=2.0 * rank),
            f"released_e{factors}_r{rank}": AdapterConfig.released(factors, rank, dropout=0.0)}


OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8,
             "weight_decay": 0.0}


def build_trainee(shape, adapter, device: torch.device, weight_dtype: torch.dtype, master_fp32: bool,
                  checkpointing: bool):
    """(model, optimizer, scheduler): the LLM built as train.py builds it, adapters injected after reseeding,
    trainable parameters in fp32 when ``master_fp32`` (the plain backend's master weights)."""
    from mixlora.inject import inject_adapters
    from mixlora.train.optim import build_optimizer, build_scheduler

    bench_decode = load_script("bench_decode")
    llm = bench_decode.build_llama(shape, device, weight_dtype)
    torch.manual_seed(0)
    inject_adapters(llm, adapter)
    model = LLMOnly(llm)
    if master_fp32:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = build_optimizer(OPTIMIZER, model.named_parameters(), device)
    scheduler = build_scheduler(optimizer, 1000, 0, "constant")
    return model, optimizer, scheduler


def train_step(backend, batch: dict, device: torch.device) -> float:
    """One optimiser step as mixlora.train.loop runs it (accumulation 1)."""
    model = backend.module
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
    with model.routing(batch["routing_mask"].to(device)):
        with backend.autocast():
            loss = backend.forward(**inputs).loss
        backend.backward(loss)
    backend.step()
    return float(loss.detach())


def cpu_step_bytes(backend, batch: dict, device: torch.device) -> int:
    """CPU stand-in for a peak: activations saved for backward by one forward, plus the optimiser state."""
    model = backend.module
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
    with model.routing(batch["routing_mask"].to(device)):
        with saved_activations(model) as storages, backend.autocast():
            loss = backend.forward(**inputs).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    state = sum(v.numel() * v.element_size() for s in backend.optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return sum(storages.values()) + state


def run_backends(make_backends: Callable[[], dict], batch: dict, steps: int, warmup: int,
                 device: torch.device) -> list[dict]:
    """Build every variant's backend (recording the memory each adds), then time ``steps`` optimiser steps per
    variant round-robin after ``warmup`` untimed ones; one row per variant."""
    tokens = int(batch["attention_mask"].sum())
    backends: dict[str, Any] = {}
    state_bytes: dict[str, Optional[int]] = {}
    losses: dict[str, list[float]] = {}
    for name, build in make_backends().items():
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        backends[name] = build()
        losses[name] = [train_step(backends[name], batch, device)]  # the first step creates the optimiser state
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            state_bytes[name] = torch.cuda.memory_allocated(device) - before
        else:
            state_bytes[name] = None
    times = {name: [] for name in backends}
    peaks = {name: 0 for name in backends}
    for i in range(max(0, warmup - 1) + steps):
        for name, backend in backends.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                idle = torch.cuda.memory_allocated(device)
            out = []
            t = timed(lambda: out.append(train_step(backend, batch, device)), device)
            losses[name].append(out[0])
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) - idle)
            if i >= max(0, warmup - 1):
                times[name].append(t)
    if device.type != "cuda":
        for name, backend in backends.items():
            peaks[name] = cpu_step_bytes(backend, batch, device)
    rows = []
    for name in backends:
        t = statistics.median(times[name])
        row = dict(variant=name, step_ms=1e3 * t, tokens_per_s=tokens / t, step_peak_over_idle_mib=mib(peaks[name]),
                   state_mib=mib(state_bytes[name]), loss_first=losses[name][0], loss_last=losses[name][-1])
        if state_bytes[name] is not None:
            row["variant_peak_mib"] = mib(state_bytes[name] + peaks[name])
        rows.append(row)
    for name in list(backends):
        destroy = getattr(getattr(backends[name], "engine", None), "destroy", None)
        if destroy is not None:  # DeepSpeed engines hold hooks and buffers until destroyed
            destroy()
        del backends[name]
    free_memory(device)
    return rows


def vs_lora(rows: list[dict]) -> dict:
    lora = next(r for r in rows if r["variant"].startswith("lora_"))
    out = {}
    for r in rows:
        if r is lora:
            continue
        out[f"{r['variant']} / {lora['variant']} tokens/s"] = r["tokens_per_s"] / lora["tokens_per_s"]
        key = "variant_peak_mib" if "variant_peak_mib" in r else "step_peak_over_idle_mib"
        if lora.get(key):
            out[f"{r['variant']} / {lora['variant']} memory"] = r[key] / lora[key]
    return out


def zero_config(stage: int, micro_batch: int) -> dict:
    from mixlora import distributed as D

    zero = D.load_deepspeed_json(ROOT / f"configs/deepspeed/zero{stage}.json")
    return D.build_deepspeed_config(zero, global_batch_size=micro_batch, micro_batch_size=micro_batch, world_size=1,
                                    max_grad_norm=1.0, bf16=True)


def section_b(args, device: torch.device) -> dict:
    from mixlora.train.backend import PlainBackend

    bench_decode = load_script("bench_decode")
    cuda = device.type == "cuda"
    if cuda:
        shape = bench_decode.LLMShape(layers=args.train_layers)
        seq, image_positions, micro, steps, warmup = args.seq, 256, args.micro_batch, args.repeats, 2
    else:
        shape = bench_decode.LLMShape(hidden=64, intermediate=176, heads=4, layers=2, vocab=512)
        seq, image_positions, micro, steps, warmup = 96, 16, 2, 1, 1
    batch = training_batch(micro, seq, image_positions, shape.vocab)
    layout = batch.pop("layout")
    variants = train_variants(args.rank, args.factors)
    weight_dtype = torch.bfloat16 if cuda else torch.float32
    out: dict[str, Any] = dict(shape=vars(shape), micro_batch=micro, tokens_per_step=micro * seq, layout=layout,
                               gradient_checkpointing=True, steps=steps, warmup=warmup,
                               memory_metric=("CUDA: step_peak_over_idle = max_memory_allocated during a step minus "
                                              "the allocation before it (activations, gradients, optimiser "
                                              "temporaries); state = memory this variant's model, adapters and "
                                              "optimiser state hold after its first step; variant_peak = the two "
                                              "summed (what the variant needs alone)" if cuda else
                                              "CPU: activations saved for backward by one forward + optimiser "
                                              "state (no allocator statistics)"),
                               backends={}, errors={})

    def plain_backends():
        def build(adapter):
            def make():
                model, opt, sched = build_trainee(shape, adapter, device, weight_dtype, master_fp32=True,
                                                  checkpointing=True)
                return PlainBackend(model, opt, sched, accumulation=1, max_grad_norm=1.0,
                                    autocast_dtype=torch.bfloat16 if cuda else None, device=device)
            return make
        return {name: build(adapter) for name, adapter in variants.items()}

    log("b: plain backend")
    try:
        rows = run_backends(plain_backends, batch, steps, warmup, device)
        out["backends"]["plain"] = dict(precision="bf16 autocast, fp32 master weights" if cuda else "fp32",
                                        rows=rows, ratios=vs_lora(rows))
    except Exception:  # recorded in the result, and the ZeRO runs still go ahead
        out["errors"]["plain"] = traceback.format_exc()
        log(f"b: plain backend failed:\n{out['errors']['plain']}")
        free_memory(device)

    run_zero = cuda or args.zero_on_cpu
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
        configs = {stage: zero_config(stage, micro) for stage in ZERO_STAGES}
    except Exception:  # deepspeed missing or broken: say so, keep the plain numbers
        out["errors"]["deepspeed import"] = traceback.format_exc()
        log(f"b: DeepSpeed unavailable:\n{out['errors']['deepspeed import']}")
        return out
    if not run_zero:
        out["zero_skipped"] = ("ZeRO-2/3 engines run on CUDA only by default (on CPU the first start compiles "
                               "DeepSpeed's shared-memory op); their configs were built: pass --zero-on-cpu to run them")
        out["zero_configs"] = {f"zero{s}": c["zero_optimization"] for s, c in configs.items()}
        return out
    from mixlora import distributed as D

    dist = D.init_deepspeed(device.type)
    for stage, ds_config in configs.items():
        if not cuda:
            ds_config = dict(ds_config, bf16={"enabled": False})

        def zero_backends(ds_config=ds_config):
            def build(adapter):
                def make():
                    model, opt, sched = build_trainee(shape, adapter, device, weight_dtype, master_fp32=False,
                                                      checkpointing=True)
                    return D.DeepSpeedBackend(model, opt, sched, ds_config, dist)
                return make
            return {name: build(adapter) for name, adapter in variants.items()}

        log(f"b: DeepSpeed ZeRO-{stage}")
        try:
            rows = run_backends(zero_backends, batch, steps, warmup, device)
            out["backends"][f"zero{stage}"] = dict(precision="DeepSpeed bf16 (fp32 optimiser partitions)" if cuda
                                                   else "fp32", zero_optimization=ds_config["zero_optimization"],
                                                   rows=rows, ratios=vs_lora(rows))
        except Exception:  # one stage failing leaves the other's numbers
            out["errors"][f"zero{stage}"] = traceback.format_exc()
            log(f"b: ZeRO-{stage} failed:\n{out['errors'][f'zero{stage}']}")
            free_memory(device)
    return out


# ============================================================================================ c: decoding
def section_c(args, device: torch.device) -> dict:
    bench = load_script("bench_decode")
    cuda = device.type == "cuda"
    if cuda:
        ns = Namespace(sizes="7b_2layer,tiny", batch=8, new_tokens=32, prompt_len=None, rank=args.rank,
                       factors=args.factors, repeats=args.repeats, warmup=1, seed=0, dtype="bf16")
        shapes = None
        command = (f"python scripts/bench_decode.py --device cuda --dtype bf16 --sizes {ns.sizes} --repeats "
                   f"{ns.repeats} --rank {ns.rank} --factors {ns.factors}")
    else:
        ns = Namespace(sizes="7b_2layer", batch=2, new_tokens=4, prompt_len=24, rank=args.rank, factors=args.factors,
                       repeats=1, warmup=1, seed=0, dtype="fp32")
        shapes = {"7b_2layer": bench.LLMShape(hidden=64, intermediate=176, heads=4, layers=2, vocab=512)}
        command = "reduced CPU shapes (hidden 64): not reachable from scripts/bench_decode.py's options"
    dtype = torch.bfloat16 if ns.dtype == "bf16" else torch.float32
    sizes = bench.run_sizes(ns, device, dtype, shapes=shapes, progress=False)
    result = dict(command=command, args=vars(ns), sizes=sizes, target=bench.TARGET)
    meta = run_metadata(device, [], script=bench.__file__)
    result["markdown"] = bench.markdown({**meta, **result, "command": command})
    return result


# ============================================================================================ d: SmolLM2
def smollm2_paths(folder: Path) -> dict:
    """{"llm": abs path, "vision": abs path} from the preparation's manifest.json."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return {part: str((folder / manifest[part]["folder"]).resolve()) for part in ("llm", "vision")}


def run_logged(cmd: list[str], log_file: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    with open(log_file, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    tail = log_file.read_text(errors="replace").splitlines()[-40:]
    return dict(command=" ".join(["python", *cmd[1:]]), returncode=proc.returncode,
                seconds=time.perf_counter() - t0, log=str(log_file), log_tail="\n".join(tail))


def section_d(args, device: torch.device) -> dict:
    if not args.smollm2_dir:
        return dict(skipped="no --smollm2-dir given (prepare one with `python scripts/prepare_smollm2.py --out DIR`)")
    folder = Path(args.smollm2_dir)
    if not (folder / "manifest.json").is_file():
        return dict(skipped=f"--smollm2-dir {folder} holds no manifest.json: prepare it with "
                            f"`python scripts/prepare_smollm2.py --out {folder}`")
    if not (ROOT / "configs/model/smollm2_clip.yaml").is_file():
        return dict(skipped="configs/model/smollm2_clip.yaml is missing from this checkout")
    missing = [m for m in ("hydra", "omegaconf", "datasets", "pyarrow", "pandas", "PIL")
               if importlib.util.find_spec(m) is None]
    if missing:
        return dict(skipped=f"train.py/eval.py need {', '.join(missing)}, not installed here (train.py reads its "
                            "JSON data through datasets): add them with `bash scripts/gpu_wheels.sh --with-datasets`")
    paths = smollm2_paths(folder)
    work = Path(args.work).resolve() / "smollm2"
    work.mkdir(parents=True, exist_ok=True)
    run_dir, eval_dir, data = work / "run", work / "eval", work / "synthetic"
    cuda = device.type == "cuda"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    steps = args.smollm2_steps
    # A small synthetic suite (the default is ~4k training records); the stack's processor resizes its images.
    suite = [f"data.annotations={data}/train.json", f"data.image_folder={data}/images", "data.generate.per_task=8",
             "data.generate.eval_per_task=12", "data.generate.mme_images=2", "data.generate.stage1_size=0",
             "++data.generate.seen_per_task=2"]
    micro = 8 if cuda else 2
    train = [sys.executable, "train.py", "model=smollm2_clip", f"model.paths.llm={paths['llm']}",
             f"model.paths.vision={paths['vision']}", "adapter=mixlora", *suite,
             f"trainer.device={device.type}", f"trainer.precision={'bf16' if cuda else 'fp32'}",
             f"trainer.schedule_steps={steps}", f"trainer.max_steps={steps}", f"trainer.micro_batch_size={micro}",
             f"trainer.global_batch_size={micro}", "trainer.log_every=1", "trainer.save_every=0", "trainer.progress_bar=false",
             "logger=disabled", f"output_dir={run_dir}", "overwrite=true"]
    out: dict[str, Any] = dict(smollm2_dir=str(folder), paths=paths, steps=steps)
    log("d: train.py")
    out["train"] = run_logged(train, work / "train.log", env)
    summary = run_dir / "summary.json"
    if out["train"]["returncode"] != 0 or not summary.is_file():
        raise RuntimeError(f"train.py exited with {out['train']['returncode']}:\n{out['train']['log_tail']}")
    out["train"]["summary"] = json.loads(summary.read_text())
    tasks, limit = ("[mme,pope]", 2) if cuda else ("[pope]", 1)
    evaluate = [sys.executable, "eval.py", f"run={run_dir}", f"tasks={tasks}", f"limit={limit}",
                f"data_root={data}", f"device={device.type}", f"dtype={'bfloat16' if cuda else 'float32'}",
                "batch_size=8", f"output_dir={eval_dir}", "overwrite=true", "progress=none"]
    log("d: eval.py")
    out["eval"] = run_logged(evaluate, work / "eval.log", env)
    metrics = eval_dir / "eval" / "metrics.json"
    if out["eval"]["returncode"] != 0 or not metrics.is_file():
        raise RuntimeError(f"eval.py exited with {out['eval']['returncode']}:\n{out['eval']['log_tail']}")
    out["eval"]["metrics"] = json.loads(metrics.read_text())
    return out


# ============================================================================================ report
def environment(device: torch.device) -> dict:
    env: dict[str, Any] = dict(cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                   compute_capability=f"{props.major}.{props.minor}", nccl=".".join(map(str, torch.cuda.nccl.version())))
    for name in ("deepspeed", "hydra", "omegaconf", "accelerate", "peft"):
        spec = importlib.util.find_spec(name)
        env[name] = "not installed" if spec is None else "installed"
    return env


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown(result: dict) -> str:
    lines = [f"# GPU check ({result['device']})", "", f"Command: `{result['command']}`  ",
             f"Date: {result['date']}, git {result['git']}, python {result['python']}, torch {result['torch']} "
             f"(CUDA {result['cuda']}), transformers {result['transformers']}, {result['machine']}  ",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in result["environment"].items()), ""]
    for key, sec in result["sections"].items():
        lines += [f"## {key}: {SECTIONS[key]} — {sec['status']} ({sec['seconds']:.0f} s)", ""]
        if sec["status"] == "skipped":
            lines += [f"Skipped: {sec['skipped']}", ""]
            continue
        if sec["status"] == "failed":
            lines += ["```", sec["error"].rstrip(), "```", ""]
            continue
        if key in ("a", "c"):
            lines += ["#" + line if line.startswith("#") else line for line in sec["markdown"].splitlines()] + [""]
        elif key == "b":
            s = sec["shape"]
            lines += [f"Llama hidden {s['hidden']}, FFN {s['intermediate']}, {s['heads']} heads, {s['layers']} layers, "
                      f"vocabulary {s['vocab']}; micro batch {sec['micro_batch']} x {sec['layout']['seq']} tokens "
                      f"({sec['layout']['image_positions']} image positions), gradient checkpointing; median of "
                      f"{sec['steps']} steps after {sec['warmup']} warmup, variants round-robin.  ",
                      f"Memory: {sec['memory_metric']}", ""]
            for backend, res in sec["backends"].items():
                lines += [f"### {backend} ({res['precision']})", "",
                          "| variant | step ms | tokens/s | step peak over idle MiB | state MiB | variant peak MiB | "
                          "loss first → last |", "|---|---:|---:|---:|---:|---:|---|"]
                for r in res["rows"]:
                    lines.append(f"| {r['variant']} | {fmt(r['step_ms'])} | {fmt(r['tokens_per_s'], 0)} | "
                                 f"{fmt(r['step_peak_over_idle_mib'])} | {fmt(r['state_mib'])} | "
                                 f"{fmt(r.get('variant_peak_mib'))} | {r['loss_first']:.3f} → {r['loss_last']:.3f} |")
                lines += [""] + [f"- {k}: {v:.3f}" for k, v in res["ratios"].items()] + [""]
            if sec.get("zero_skipped"):
                lines += [f"ZeRO: {sec['zero_skipped']}", ""]
            for what, err in sec["errors"].items():
                lines += [f"### {what}: FAILED", "", "```", err.rstrip(), "```", ""]
        elif key == "d":
            for step in ("train", "eval"):
                if step in sec:
                    r = sec[step]
                    lines += [f"- {step}: `{r['command']}` → exit {r['returncode']} in {r['seconds']:.0f} s"]
            summary = sec.get("train", {}).get("summary", {})
            if summary:
                lines.append("- train summary: " + ", ".join(f"{k} {fmt(v, 3)}" for k, v in summary.items()
                                                              if isinstance(v, (int, float))))
            metrics = sec.get("eval", {}).get("metrics")
            if metrics is not None:
                lines.append(f"- eval metrics: `{json.dumps(metrics)[:1500]}`")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write(result: dict, out: Path, stem: str) -> None:
    write_result(out, stem, result, markdown(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda | cpu")
    p.add_argument("--sections", default="a,b,c,d", help="comma-separated, from a,b,c,d")
    p.add_argument("--out", default=str(ROOT / "results/bench"), help="folder for gpu_check_<device>.{json,md}")
    p.add_argument("--work", default=str(ROOT / "runs/gpu_check"), help="scratch folder (section d's runs)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (CUDA; CPU uses 1)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--factors", type=int, default=16)
    p.add_argument("--train-layers", type=int, default=4, help="b: decoder layers of the 7B-width Llama")
    p.add_argument("--seq", type=int, default=2048, help="b: tokens per training sequence (CUDA)")
    p.add_argument("--micro-batch", type=int, default=4, help="b: sequences per step (CUDA)")
    p.add_argument("--zero-on-cpu", action="store_true", help="b: run the ZeRO-2/3 engines on CPU too (slow start)")
    p.add_argument("--smollm2-dir", default=None, help="d: a folder written by scripts/prepare_smollm2.py --out")
    p.add_argument("--smollm2-steps", type=int, default=4, help="d: training steps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 with --device cpu, a code check that a busy machine's "
                        "thread scheduling would otherwise slow down; torch's default with cuda)")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        p.error(f"--sections {args.sections!r}: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    if args.device not in ("cpu", "cuda"):
        p.error(f"--device {args.device!r}: use cuda or cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    for name in ("repeats", "rank", "factors", "train_layers", "seq", "micro_batch", "smollm2_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.rank >= args.factors:
        p.error(f"--rank {args.rank} must be smaller than --factors {args.factors}")
    if args.seq < 320:
        p.error(f"--seq {args.seq} must be >= 320 (256 image positions, a prefix, a question and an answer)")
    device = torch.device(args.device)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    stem = f"gpu_check_{device.type}"
    result = dict(**run_metadata(device, argv, script=__file__), environment=environment(device), args=vars(args),
                  sections={})
    funcs = {"a": section_a, "b": section_b, "c": section_c, "d": section_d}
    failed = []
    for key in sections:
        log(f"section {key}: {SECTIONS[key]}")
        t0 = time.perf_counter()
        try:
            data = funcs[key](args, device)
            status = "skipped" if "skipped" in data else ("partial" if data.get("errors") else "ok")
        except Exception:  # a failing section is recorded with its traceback; the next one still runs
            data = dict(error=traceback.format_exc())
            status = "failed"
            log(f"section {key} failed:\n{data['error']}")
        if status in ("failed", "partial"):
            failed.append(key)
        if device.type == "cuda":
            data["max_memory_allocated_mib"] = mib(torch.cuda.max_memory_allocated(device))
        result["sections"][key] = dict(title=SECTIONS[key], status=status, seconds=time.perf_counter() - t0, **data)
        free_memory(device)
        write(result, out, stem)
        log(f"section {key}: {status} in {result['sections'][key]['seconds']:.1f} s; wrote {out / stem}.json")
    print(markdown(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
