#!/usr/bin/env python
# One file on purpose: one pipeline (rows -> meta model -> ZeRO-2/3 states -> table); ~70 lines are its docstring.
"""Trainable parameters and per-GPU model-state memory of every Table 1 row under DeepSpeed ZeRO-2 and ZeRO-3.

Rows: the experiments ``configs/experiment/t1_*.yaml`` (the paper's LoRA and released-MixLoRA rows) and
``t1c_*.yaml`` (the corrected MixLoRA at the same E, r), each composed as ``train.py experiment=<name>`` would see
it (``mixlora.train.compose_config``), plus the full fine-tuning row ``LLaVA_FT`` when ``results/paper/table1.csv``
has it (``experiment=paper_base adapter=none model.train_llm=true``: every LLM weight and the projector train).

Parameter counts are exact: the paper's model is built on the ``meta`` device (shapes, no storage) by the
project's own builders (``mixlora.model.llm.build_llm``, ``HFCLIPVisionTower``, ``build_llava``) from the
architecture below (or a checkpoint's config.json, ``--llm-config`` / ``--vision-config``), the row's adapter is
injected with ``mixlora.inject_adapters`` and ``mixlora.train.params.count_parameters`` splits the result.

* LLM (Vicuna-7B v1.3 = LLaMA-7B shapes): d = 4096, f = 11008 (SwiGLU), L = 32 layers, 32 heads (no GQA),
  untied lm_head, vocabulary V = 32000 + 1: ``mixlora.data.tokenizer.load_tokenizer`` adds ``<image>`` and the
  builder resizes the embeddings to len(tokenizer). Per layer 4d² + 3df + 2d; total 2Vd + L(4d² + 3df + 2d) + d.
* Vision: CLIP ViT-L/14 at 224 px (the whole ``CLIPVisionModel`` is held, though features come from layer -2).
* Projector: ``nn.Linear(1024, 4096)`` (LLaVA v1), trained unless ``model.builder.freeze_projector``.

Adapter parameters per adapted linear ``d_in -> d_out`` (``mixlora.layers``; targets q,k,v,o,gate,up,down of
every layer):

    LoRA r:       lora_a [r, d_in] + lora_b [r, d_out]                      r·(d_in + d_out)      trainable
    MixLoRA E, r: pools lora_a [E, d_in] + lora_b [E, d_out]                E·(d_in + d_out)      trainable
                  routers router_a, router_b [E, d_in] (no bias)            2·E·d_in
                  CFS router_cfs W_AB [r, d_in, E] (cfs != "none")          r·d_in·E
                  routers and W_AB train only under router_grad="straight_through" (the t1 rows: "none", frozen).

Precision and what DeepSpeed keeps (``bf16.enabled`` under ``trainer.precision=auto`` on a GPU). The engine casts
every parameter to bf16 (frozen LLM, vision tower, frozen routers, and the trainable ones); AdamW (torch's, the
client optimiser) runs on an fp32 master copy. Per trainable element: bf16 weight 2 B, bf16 gradient 2 B, fp32
master 4 B, fp32 exp_avg 4 B, fp32 exp_avg_sq 4 B (optimizer states 12 B); per frozen element: bf16 weight 2 B.
With N trainable and F frozen elements on G GPUs, per GPU:

    ZeRO-2:  2F  +  2·N'  +  (2 + 12)·N'/G
             frozen weights and the trainable bf16 weights whole on every GPU; gradients and optimizer states
             partitioned. N' = Σ_groups ceil(n_g / 2G)·2G: DeepSpeed flattens each optimiser parameter group
             (``mixlora.train.optim.parameter_groups``: >= 2-D tensors, 1-D tensors) and pads it to a multiple of
             2G elements (``nccl_start_alignment_factor`` = 2), so N'/G is the partition each GPU owns.
    ZeRO-3:  2·Σ_p ceil(n_p / G)  +  2·Σ_{p: n_p <= T} n_p  +  (2 + 12)·Σ_{p trainable} ceil(n_p / G)
             every tensor p (frozen or not) is partitioned, padded to a multiple of G; tensors with at most
             T = ``stage3_param_persistence_threshold`` elements (configs/deepspeed/zero3.json) are "persistent":
             once gathered they stay whole on every GPU beside their partition.

Not included (the figures are model states, not the whole footprint):

* activations (micro-batch 16 x 2047 positions with gradient checkpointing: the checkpointed layer inputs, one
  layer's recomputed activations, the [16, 2047, V] logits) and the allocator's fragmentation;
* the fp32 copy of the gradient partition made at the optimiser step (DeepSpeed converts the bf16 partition
  before ``optimizer.step``): +4·N'/G (ZeRO-2) or +4·Σ ceil(n_p/G) (ZeRO-3) at the step, reported as
  ``step_fp32_grad`` in the JSON; DeepSpeed's estimators count it (their "18 = 2 + 4 + 4 + 8" per element);
* communication buffers: ZeRO-2's reduce buckets (2 x ``reduce_bucket_size`` bf16 elements with overlap_comm),
  ZeRO-3's gathered full weights of the modules being computed (prefetch / live-parameter limits);
* buffers (rotary inv_freq, CLIP position ids: under 1 MB), the CUDA context and NCCL workspaces.

GiB = 2**30 bytes; ``--gpu-memory-gb`` is compared with the per-GPU model states in the same unit.
``--deepspeed-check`` adds DeepSpeed's own estimators (``estimate_zero2_model_states_mem_needs``,
``estimate_zero3_model_states_mem_needs``, no offload) applied to the trainable parameters (they treat every
parameter they are given as trainable) as a cross-check of the trainable part: ZeRO-2 2N + 18N/G, which equals
ours plus the step-time fp32 gradients (18 = 2 bf16 gradients + 4 fp32 gradients + 4 master + 8 moments);
ZeRO-3 4·L_max + 18N/G with L_max the largest module's trainable parameters (their allowance for gathered weights
and gradients), where ours plus the step-time fp32 gradients is 20N/G (2 + 2 + 4 + 4 + 4, DeepSpeed gives no
breakdown of its 18) plus the persistent tensors.

    python scripts/memory_plan.py                              # every row, 4 and 8 GPUs, fits 80 / 40 GiB
    python scripts/memory_plan.py --rows 't1_lora_*' --gpus 8 --gpu-memory-gb 80 --json plan.json
    python scripts/memory_plan.py --deepspeed-check --json results/bench/memory_plan.json \\
        --md results/bench/memory_plan.md
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
TABLE1 = ROOT / "results" / "paper" / "table1.csv"
ROW_GLOBS = ("t1_*.yaml", "t1c_*.yaml")
# The full fine-tuning row of Table 1 (results/paper/table1.csv, model column) and how train.py runs it
# (configs/model/llava_v1_vicuna7b.yaml: train_llm).
FULL_FT = ("LLaVA_FT", ("experiment=paper_base", "adapter=none", "model.train_llm=true"))
# The ZeRO-3 settings (persistence threshold) are those of trainer=zero3, the paper rows' trainer.
ZERO3_TRAINER = ROOT / "configs" / "trainer" / "zero3.yaml"
PAPER_BUILDER = "mixlora.build.build_pretrained_llava"
GiB = 2 ** 30

# Vicuna-7B v1.3's config.json (LLaMA-7B shapes); build_llm(config=...) takes it as is.
LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
# The vision part of openai/clip-vit-large-patch14's config.json (CLIP ViT-L/14, 224 px).
CLIP_VIT_L14_224 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "num_channels": 3}
# Tokens the project's tokenizer loader adds to a checkpoint tokenizer of config.vocab_size tokens: <image>.
ADDED_TOKENS = 1


class PlanError(Exception):
    """Bad input (an option, a row pattern, a config); main() prints it and exits with status 2."""


@dataclass(frozen=True)
class Tensor:
    """One parameter: elements, dimensions, whether it trains."""

    numel: int
    ndim: int
    trainable: bool


@dataclass
class Row:
    name: str
    overrides: tuple[str, ...]
    kind: str  # lora | mixlora | full
    E: Optional[int]
    r: Optional[int]
    router_grad: Optional[str]
    cfs: Optional[str]
    deepspeed_stage: int
    counts: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    largest_trainable_module: int = 0


# ---------------------------------------------------------------------------------------------- rows
def table1_rows(patterns: Sequence[str] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """[(row name, compose overrides)] of Table 1: the t1_/t1c_ experiments and LLaVA_FT (when table1.csv has
    it), keeping those whose name matches one of the shell-style ``patterns`` (all when none)."""
    names = sorted({p.stem for g in ROW_GLOBS for p in EXPERIMENTS.glob(g)})
    rows = [(n, (f"experiment={n}",)) for n in names]
    with TABLE1.open(newline="") as fh:
        if any(r["model"] == FULL_FT[0] for r in csv.DictReader(fh)):
            rows.insert(0, FULL_FT)
    if patterns:
        rows = [row for row in rows if any(fnmatch.fnmatchcase(row[0], p) for p in patterns)]
        if not rows:
            known = ", ".join([FULL_FT[0], *names])
            raise PlanError(f"--rows {' '.join(patterns)} matches no Table 1 row; rows: {known}")
    return rows


def load_json_config(path: Optional[str], default: dict, nested: Optional[str] = None) -> dict:
    """A config.json as a dict (``nested``: the sub-dict to take when present, e.g. CLIP's vision_config)."""
    if path is None:
        return dict(default)
    p = Path(path)
    if not p.is_file():
        raise PlanError(f"{path} does not exist (pass a checkpoint's config.json)")
    try:
        values = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise PlanError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(values, dict):
        raise PlanError(f"{path}: a config.json holds a JSON object")
    if nested and isinstance(values.get(nested), dict):
        values = values[nested]
    return values


# ---------------------------------------------------------------------------------------------- model
def build_meta_model(llm_config: dict, vision_config: dict, vocab_size: int, projector: str = "linear",
                     freeze_projector: bool = False):
    """The LlavaMixModel of ``llm_config`` + HF CLIP ``vision_config`` + ``projector`` on the meta device."""
    import torch

    from mixlora.model.llava import build_llava
    from mixlora.model.llm import build_llm
    from mixlora.model.vision import HFCLIPVisionTower

    llm_config = dict(llm_config)
    if "model_type" not in llm_config:
        raise PlanError(f"the LLM config needs a model_type (e.g. 'llama'); got keys {sorted(llm_config)}")
    base_vocab = int(llm_config.get("vocab_size", 0))
    llm_config["vocab_size"] = max(base_vocab, vocab_size)
    with torch.device("meta"):
        lm = build_llm(config=llm_config, dtype="bfloat16")
        tower = HFCLIPVisionTower(config=dict(vision_config), dtype="bfloat16")
        return build_llava(tower, lm, image_token_id=vocab_size - 1, projector=projector,
                           freeze_projector=freeze_projector)


def prepare(model, adapter: Any = None, train_llm: bool = False):
    """Inject ``adapter`` (an AdapterConfig or mapping; None: none) into ``model.llm`` and set what trains, as
    ``mixlora.train.runner`` does. Returns (count_parameters(model), [Tensor], largest module's trainable)."""
    from mixlora import inject_adapters
    from mixlora.train.params import count_parameters

    if adapter is not None:
        inject_adapters(model.llm, adapter)
    if train_llm:
        model.llm.requires_grad_(True)
    tensors = [Tensor(p.numel(), p.dim(), p.requires_grad) for p in model.parameters()]
    largest = max(sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad) for m in model.modules())
    return count_parameters(model), tensors, largest


def plan_row(name: str, overrides: Sequence[str], llm_config: dict, vision_config: dict, vocab_size: int) -> Row:
    """Compose the row, check it is on the paper's bf16 DeepSpeed stack, build it on meta and count."""
    from mixlora import AdapterConfig
    from mixlora.train import compose_config

    cfg = compose_config(list(overrides))
    builder = cfg.model.builder
    if builder._target_ != PAPER_BUILDER:
        raise PlanError(f"row {name}: model.builder is {builder._target_}, not the paper's stack ({PAPER_BUILDER})")
    if builder.vision.backend != "hf_clip":
        raise PlanError(f"row {name}: vision backend {builder.vision.backend!r}; this plan builds the HF CLIP tower")
    if cfg.trainer.precision not in ("auto", "bf16"):
        raise PlanError(f"row {name}: trainer.precision={cfg.trainer.precision}; the plan is for bf16 DeepSpeed "
                        "training (auto resolves to bf16 on a GPU)")
    adapter = None if cfg.adapter.kind == "none" else AdapterConfig.coerce(cfg.adapter)
    train_llm = bool(cfg.model.get("train_llm", False))
    stage = 0
    if cfg.trainer.strategy == "deepspeed":
        stage = int(read_zero_json(cfg.trainer.deepspeed_config).get("zero_optimization", {}).get("stage", 0))
    model = build_meta_model(llm_config, vision_config, vocab_size, projector=builder.projector,
                             freeze_projector=bool(builder.freeze_projector))
    counts, tensors, largest = prepare(model, adapter, train_llm)
    mix = adapter is not None and adapter.kind == "mixlora"
    row = Row(name=name, overrides=tuple(overrides), kind="full" if train_llm else (adapter.kind if adapter else "none"),
              E=adapter.num_factors if mix else None, r=adapter.rank if adapter else None,
              router_grad=adapter.router_grad if mix else None, cfs=adapter.cfs if mix else None,
              deepspeed_stage=stage, counts=counts, tensors=tensors, largest_trainable_module=largest)
    return row


# ---------------------------------------------------------------------------------------------- ZeRO arithmetic
BF16, FP32 = 2, 4


def zero2_states(tensors: Sequence[Tensor], gpus: int) -> dict[str, int]:
    """Per-GPU bytes under ZeRO-2 on ``gpus`` GPUs (module docstring): frozen and trainable bf16 weights whole,
    gradients and optimizer states on the owned partition of each padded parameter group."""
    frozen = sum(t.numel for t in tensors if not t.trainable)
    groups = [sum(t.numel for t in tensors if t.trainable and t.ndim >= 2),
              sum(t.numel for t in tensors if t.trainable and t.ndim < 2)]
    align = 2 * gpus
    padded = sum(math.ceil(n / align) * align for n in groups)
    part = padded // gpus
    return _states(frozen_weights=BF16 * frozen, trainable_weights=BF16 * padded, partition=part)


def zero3_states(tensors: Sequence[Tensor], gpus: int, persistence_threshold: int) -> dict[str, int]:
    """Per-GPU bytes under ZeRO-3 on ``gpus`` GPUs (module docstring): every tensor partitioned (ceil(n/G)
    elements each), tensors of <= ``persistence_threshold`` elements also whole, optimizer states partitioned."""
    def held(t: Tensor) -> int:
        return math.ceil(t.numel / gpus) + (t.numel if t.numel <= persistence_threshold else 0)

    part = sum(math.ceil(t.numel / gpus) for t in tensors if t.trainable)
    return _states(frozen_weights=BF16 * sum(held(t) for t in tensors if not t.trainable),
                   trainable_weights=BF16 * sum(held(t) for t in tensors if t.trainable), partition=part)


def _states(frozen_weights: int, trainable_weights: int, partition: int) -> dict[str, int]:
    s = {"frozen_weights": frozen_weights, "trainable_weights": trainable_weights, "gradients": BF16 * partition,
         "fp32_master": FP32 * partition, "exp_avg": FP32 * partition, "exp_avg_sq": FP32 * partition}
    s["total"] = sum(s.values())
    s["step_fp32_grad"] = FP32 * partition  # transient, not in total
    return s


def persistence_threshold(zero_json: dict) -> int:
    """``stage3_param_persistence_threshold`` of a ZeRO config, DeepSpeed's default when the file omits it."""
    zero = zero_json.get("zero_optimization", {})
    if "stage3_param_persistence_threshold" in zero:
        return int(zero["stage3_param_persistence_threshold"])
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    return int(DeepSpeedZeroConfig().param_persistence_threshold)


def read_zero_json(path: str | Path) -> dict:
    from mixlora.distributed import load_deepspeed_json

    p = Path(path)
    try:
        return load_deepspeed_json(p if p.is_absolute() else ROOT / p)
    except (FileNotFoundError, ValueError) as err:
        raise PlanError(str(err)) from err


def trainer_zero3_json() -> tuple[str, dict]:
    """(path, contents) of the DeepSpeed JSON that ``trainer=zero3`` uses."""
    from omegaconf import OmegaConf

    path = OmegaConf.load(ZERO3_TRAINER).deepspeed_config  # absolute (${config_dir:}); shown from the checkout
    try:
        shown = Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:  # an installed package's config tree
        shown = path
    return shown, read_zero_json(path)


def deepspeed_estimates(row: Row, gpus: int) -> dict[str, int]:
    """DeepSpeed's own per-GPU estimates (no offload) for the row's trainable parameters only."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n = row.counts["all"]["trainable"]
    _, z2 = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=False)
    _, z3, _ = estimate_zero3_model_states_mem_needs(n, row.largest_trainable_module, num_gpus_per_node=gpus,
                                                     num_nodes=1, cpu_offload=False, cpu_offload_params=False)
    return {"zero2_trainable": int(z2), "zero3_trainable": int(z3)}


# ---------------------------------------------------------------------------------------------- report
def row_result(row: Row, gpus: Sequence[int], threshold: int, memory_gb: Sequence[float],
               ds_check: bool) -> dict:
    c = row.counts
    trainable = c["all"]["trainable"]
    out = {
        "row": row.name, "overrides": list(row.overrides), "kind": row.kind, "E": row.E, "r": row.r,
        "cfs": row.cfs, "router_grad": row.router_grad, "configured_zero_stage": row.deepspeed_stage,
        "parameters": {part: dict(v) for part, v in c.items()},
        "trainable": trainable, "frozen": c["all"]["total"] - trainable,
        "optimizer_state_bytes": 3 * FP32 * trainable,
        "largest_trainable_module": row.largest_trainable_module,
        "per_gpu": {},
    }
    for g in gpus:
        for stage, states in ((2, zero2_states(row.tensors, g)), (3, zero3_states(row.tensors, g, threshold))):
            states["fits_gib"] = {f"{m:g}": states["total"] <= m * GiB for m in memory_gb}
            out["per_gpu"][f"zero{stage}_{g}gpu"] = states
        if ds_check:
            out["per_gpu"][f"deepspeed_estimate_{g}gpu"] = deepspeed_estimates(row, g)
    return out


def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def _count(n: int) -> str:
    return f"{n:,}"


def render(result: dict) -> str:
    rows, gpus, mems = result["rows"], result["gpus"], result["gpu_memory_gb"]
    arch = result["architecture"]
    lines = [
        "# Memory plan: Table 1 rows, model states per GPU under DeepSpeed ZeRO-2 / ZeRO-3 (bf16)", "",
        f"Command: `{result['command']}`  ",
        f"LLM: {arch['llm_text']}; vision: {arch['vision_text']}; projector and adapters from each row's "
        "config. Parameters counted on the meta device after `mixlora.inject_adapters` (exact shapes).  ",
        "Bytes: every weight bf16 (2 B; DeepSpeed bf16 casts the whole model); per trainable element also a bf16 "
        "gradient (2 B) and AdamW's fp32 master + exp_avg + exp_avg_sq (12 B). ZeRO-2: frozen and trainable "
        "weights whole on every GPU, gradients + optimizer states partitioned. ZeRO-3: everything partitioned; "
        f"tensors of <= {result['zero3_persistence_threshold']:,} elements (`stage3_param_persistence_threshold`, "
        f"{result['zero3_json']}) also kept whole.  ",
        "**Not included: activations** (micro-batch 16 x 2047 positions, gradient checkpointing), the fp32 "
        "gradient copy made at the optimiser step (`step_fp32_grad` in the JSON), communication buckets and "
        "gathered ZeRO-3 layers, CUDA context. The fit marks compare model states only: a necessary condition.",
        "",
        "## Parameters", "",
        "| row | adapter | E | r | pools | routers + CFS W_AB | projector | LLM | trainable | frozen |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["parameters"]
        routers = p["routers"]
        if routers["total"] == 0:
            router_text = "-"
        elif routers["trainable"]:
            router_text = f"{_count(routers['trainable'])} (trained)"
        else:
            router_text = f"{_count(routers['total'])} (frozen, router_grad={r['router_grad']})"
        adapter = {"full": "full LLM", "lora": "LoRA", "none": "none"}.get(r["kind"], f"MixLoRA cfs={r['cfs']}")
        proj = p["projector"]
        proj_text = _count(proj["trainable"]) if proj["trainable"] else f"{_count(proj['total'])} (frozen)"
        llm = p["llm"]
        llm_text = _count(llm["trainable"]) if llm["trainable"] else f"0 ({_count(llm['total'])} frozen)"
        lines.append(f"| {r['row']} | {adapter} | {r['E'] or '-'} | {r['r'] or '-'} | {_count(p['pools']['trainable'])}"
                     f" | {router_text} | {proj_text} | {llm_text} | {_count(r['trainable'])} | {_count(r['frozen'])} |")
    marks = "/".join(f"{m:g}" for m in mems)
    heads = [f"Z{s} x {g}" for s in (2, 3) for g in gpus]
    lines += ["", "## Model states per GPU (GiB)", "",
              f"Optimizer states = AdamW fp32 master + 2 moments of all trainable parameters, before partitioning. "
              f"Each cell: GiB per GPU, then whether it fits {marks} GiB (✓ / ✗). `cfg`: the ZeRO stage the row's "
              "own config trains with.", "",
              "| row | E | r | trainable | optimizer states (GiB) | cfg | " + " | ".join(heads) + " |",
              "|---|---:|---:|---:|---:|---|" + "---:|" * len(heads)]
    for r in rows:
        cells = []
        for s in (2, 3):
            for g in gpus:
                st = r["per_gpu"][f"zero{s}_{g}gpu"]
                fits = "/".join("✓" if st["fits_gib"][f"{m:g}"] else "✗" for m in mems)
                cells.append(f"{_gib(st['total'])} {fits}")
        lines.append(f"| {r['row']} | {r['E'] or '-'} | {r['r'] or '-'} | {_count(r['trainable'])} | "
                     f"{_gib(r['optimizer_state_bytes'])} | Z{r['configured_zero_stage']} | " + " | ".join(cells) + " |")
    g0 = gpus[0]
    lines += ["", f"### Breakdown on {g0} GPUs (GiB per GPU)", "",
              "| row | stage | frozen weights | trainable weights | gradients | fp32 master | exp_avg | exp_avg_sq "
              "| total | + step fp32 grads |", "|---|---|" + "---:|" * 8]
    for r in rows:
        for s in (2, 3):
            st = r["per_gpu"][f"zero{s}_{g0}gpu"]
            lines.append(f"| {r['row']} | ZeRO-{s} | " + " | ".join(_gib(st[k]) for k in (
                "frozen_weights", "trainable_weights", "gradients", "fp32_master", "exp_avg", "exp_avg_sq", "total",
                "step_fp32_grad")) + " |")
    if result["deepspeed_check"]:
        lines += ["", "## Cross-check: DeepSpeed's estimators on the trainable parameters (GiB per GPU)", "",
                  "DeepSpeed's `estimate_zero{2,3}_model_states_mem_needs` (no offload) treat every parameter they "
                  "are given as trainable, so they are applied to the trainable part only. ZeRO-2: 2N + 18N/G, "
                  "i.e. ours + the step-time fp32 gradients. ZeRO-3: 4·L_max + 18N/G (L_max: largest module's "
                  "trainable parameters, their allowance for gathered weights and gradients) against ours 20N/G "
                  "(2 + 2 + 4 + 4 + 4) + persistent tensors.", "",
                  "| row | G | Z2 ours (trainable + step fp32 grads) | Z2 DeepSpeed | Z3 ours (trainable + step fp32 "
                  "grads) | Z3 DeepSpeed |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            for g in gpus:
                ds = r["per_gpu"][f"deepspeed_estimate_{g}gpu"]
                ours = [r["per_gpu"][f"zero{s}_{g}gpu"] for s in (2, 3)]
                mine = [st["total"] - st["frozen_weights"] + st["step_fp32_grad"] for st in ours]
                lines.append(f"| {r['row']} | {g} | {_gib(mine[0])} | {_gib(ds['zero2_trainable'])} | "
                             f"{_gib(mine[1])} | {_gib(ds['zero3_trainable'])} |")
    return "\n".join(lines) + "\n"


def _arch_text(llm: dict, vision: dict, vocab: int) -> tuple[str, str]:
    llm_text = (f"{llm.get('model_type')} d={llm.get('hidden_size')}, f={llm.get('intermediate_size')}, "
                f"{llm.get('num_hidden_layers')} layers, {llm.get('num_attention_heads')} heads, vocab {vocab}")
    vision_text = (f"CLIP ViT d={vision.get('hidden_size')}, {vision.get('num_hidden_layers')} layers, "
                   f"patch {vision.get('patch_size')}, {vision.get('image_size')} px")
    return llm_text, vision_text


def parse_args(argv: Optional[Sequence[str]]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", default=[], metavar="PATTERN",
                   help="shell-style patterns of row names (t1_*, t1c_mixlora_e16_*, LLaVA_FT); default: all")
    p.add_argument("--gpus", nargs="+", type=int, default=[4, 8], help="GPU counts (default 4 8)")
    p.add_argument("--gpu-memory-gb", nargs="+", type=float, default=[80.0, 40.0],
                   help="GPU memory sizes in GiB to check against (default 80 40)")
    p.add_argument("--llm-config", help="an LLM config.json to use instead of the LLaMA-7B shapes")
    p.add_argument("--vision-config", help="a CLIP (vision) config.json instead of CLIP ViT-L/14-224")
    p.add_argument("--vocab-size", type=int,
                   help=f"tokenizer length (default: the LLM config's vocab_size + {ADDED_TOKENS} for <image>)")
    p.add_argument("--deepspeed-check", action="store_true", help="add DeepSpeed's own estimators (imports deepspeed)")
    p.add_argument("--json", help="write the full result (bytes, counts) to this JSON file")
    p.add_argument("--md", help="also write the printed report to this file")
    args = p.parse_args(argv)
    if any(g < 1 for g in args.gpus):
        raise PlanError(f"--gpus must be positive integers, got {args.gpus}")
    if any(not m > 0 for m in args.gpu_memory_gb):
        raise PlanError(f"--gpu-memory-gb must be positive, got {args.gpu_memory_gb}")
    if args.vocab_size is not None and args.vocab_size < 1:
        raise PlanError(f"--vocab-size must be positive, got {args.vocab_size}")
    return args


def plan(argv: Optional[Sequence[str]] = None) -> tuple[dict, str]:
    """(result dict, markdown report) for the command line ``argv``; PlanError on bad input."""
    args = parse_args(argv)
    llm = load_json_config(args.llm_config, LLAMA_7B)
    vision = load_json_config(args.vision_config, CLIP_VIT_L14_224, nested="vision_config")
    vocab = args.vocab_size or int(llm.get("vocab_size", 0)) + ADDED_TOKENS
    if vocab <= 1:
        raise PlanError("the LLM config has no vocab_size; pass --vocab-size")
    z3_path, z3_json = trainer_zero3_json()
    threshold = persistence_threshold(z3_json)
    gpus = list(dict.fromkeys(args.gpus))
    rows = []
    for name, overrides in table1_rows(args.rows):
        try:
            row = plan_row(name, overrides, llm, vision, vocab)
        except (TypeError, ValueError) as err:  # a config the builders or the adapter refuse
            raise PlanError(f"row {name}: {err}") from err
        rows.append(row)
    order = {"full": 0, "none": 0, "lora": 1, "mixlora": 2}
    rows.sort(key=lambda r: (r.name.split("_")[0] if r.kind != "full" else "", order[r.kind], r.E or 0, r.r or 0))
    llm_text, vision_text = _arch_text(llm, vision, vocab)
    command = "python " + " ".join([f"scripts/{Path(__file__).name}",
                                    *(argv if argv is not None else sys.argv[1:])])
    result = {
        "command": command, "gpus": gpus, "gpu_memory_gb": list(args.gpu_memory_gb), "unit": "GiB = 2**30 bytes",
        "architecture": {"llm": llm, "vision": vision, "vocab_size": vocab, "llm_text": llm_text,
                         "vision_text": vision_text},
        "zero3_json": z3_path, "zero3_persistence_threshold": threshold,
        "bytes_per_element": {"weight_bf16": BF16, "gradient_bf16": BF16, "fp32_master": FP32, "exp_avg": FP32,
                              "exp_avg_sq": FP32},
        "not_included": ["activations", "step-time fp32 gradient copy (step_fp32_grad, reported separately)",
                         "communication buckets and gathered ZeRO-3 layers", "buffers, CUDA context"],
        "deepspeed_check": bool(args.deepspeed_check),
        "rows": [row_result(r, gpus, threshold, args.gpu_memory_gb, args.deepspeed_check) for r in rows],
    }
    report = render(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(report)
    return result, report


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        _, report = plan(argv)
    except PlanError as err:
        print(f"memory_plan: {err}", file=sys.stderr)
        return 2
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
