"""The testbed's rows: one declarative table of what each row trains, and its default seed count.

A row is a named set of Hydra overrides on top of the testbed's stage-2 recipe (:mod:`mixlora.testbed.recipe`),
plus the fields the report groups by. Multipliers: LoRA and corrected MixLoRA use alpha = 2r (multiplier 2);
released MixLoRA keeps its own alpha = 2E (as released). Routers are frozen at initialisation (as in both
presets) except in the ``st_*`` and ``stdet_*`` rows (straight-through router gradients; ``stdet`` detaches the
router input, so only the routers learn from them).

Equal capacity: with frozen routers MixLoRA E/r trains its two pools, E (d_in + d_out) numbers per layer, exactly
what LoRA of rank E trains, so ``lora_r8`` is LoRA at equal *trainable* parameters to MixLoRA E8/r2 (its selected
rank, 2, is ``lora_r2``: equal rank). The report states both comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One row of the table.

    name: the id typed in ``--rows`` and used in run folder names.
    kind: ``joint`` (one run on every task), ``specialist`` (one run per task, each on its own data) or ``full``
        (every LLM weight trained, no adapter).
    overrides: Hydra overrides for ``train.py`` on top of the recipe's.
    seeds: default number of seeds (0, 1, ...).
    method, num_factors, rank, routing, variant: the report's description fields.
    lr_scale: the row's learning rate as a multiple of the recipe's rate for its kind (1: the shared rate).
    """

    name: str
    kind: str
    overrides: tuple[str, ...]
    seeds: int = 3
    method: str = "lora"
    num_factors: int | None = None
    rank: int | None = None
    routing: str | None = None
    variant: str | None = None
    note: str = ""
    lr_scale: float = 1.0


def _lora(name, r, kind="joint", seeds=3, note="", lr_scale=1.0):
    return Row(name, kind, ("adapter=lora", f"adapter.rank={r}"), seeds, "lora", None, r, note=note,
               lr_scale=lr_scale)


def _mix(name, e, r, routing, variant="corrected", seeds=3, extra=(), note="", released=False):
    """A MixLoRA row on the corrected preset (``adapter=mixlora``), or the released one with ``released=True``."""
    preset = "mixlora_released" if released else "mixlora"
    overrides = (f"adapter={preset}", f"adapter.num_factors={e}", f"adapter.rank={r}",
                 f"adapter.routing_tokens={routing}", *extra)
    return Row(name, "joint", overrides, seeds, "mixlora", e, r, routing, variant, note=note)


ROWS: tuple[Row, ...] = (
    Row("full_ft", "full", ("adapter=none", "model.train_llm=true"), 3, "full", note="every LLM weight trained"),
    _lora("spec_lora_r2", 2, kind="specialist", note="one LoRA r2 per task, trained on that task alone"),
    _lora("lora_r2", 2, seeds=5, note="equal rank to MixLoRA E8/r2"),
    _lora("lora_r4", 4),
    _lora("lora_r8", 8, note="equal trainable parameters to MixLoRA E8/r2 (frozen routers)"),
    # Adam moves every factor entry by about lr per step, so with the multiplier alpha/r fixed at 2 the per-step
    # change of ΔW = 2 Σ_k b_k a_kᵀ grows with the number of factors that train on an instance: r for LoRA, 2 for
    # MixLoRA E8/r2. This row scales the shared rate by 2/8 (fixed from that argument, not from results).
    _lora("lora_r8_lr_scaled", 8, lr_scale=2 / 8,
          note="lora_r8 at the shared adapter rate x 2/8 (same number of factors moving per instance as E8/r2)"),
    _mix("mixc_e8_r2_instr", 8, 2, "instruction", seeds=5),
    _mix("mixc_e8_r2_prompt", 8, 2, "prompt"),
    _mix("mixc_e8_r4_instr", 8, 4, "instruction"),
    _mix("mixc_e8_r4_prompt", 8, 4, "prompt"),
    _mix("mixc_e16_r2_instr", 16, 2, "instruction"),
    _mix("mixc_e16_r2_prompt", 16, 2, "prompt"),
    _mix("mixrel_e8_r2", 8, 2, "all", variant="released", released=True,
         note="released: mean over every token, as coded CFS"),
    _mix("mixrel_e8_r4", 8, 4, "all", variant="released", released=True),
    _mix("mixrel_e16_r2", 16, 2, "all", variant="released", released=True),
    _mix("mixrel_e8_r2_instr", 8, 2, "instruction", variant="released", released=True,
         note="released layer, instruction routing"),
    # The released layer differs from the corrected one, both routed on the instruction, in three things: its CFS
    # formula, per-step routing while decoding, and alpha = 2E (multiplier 2E/r = 8 here, against 2). Two rows
    # change one at a time, so the gap decomposes: mixc_e8_r2_instr -(formula)-> mixc_e8_r2_instr_cfsrel
    # -(decode routing)-> mixrel_e8_r2_instr_alpha2r -(multiplier)-> mixrel_e8_r2_instr.
    _mix("mixc_e8_r2_instr_cfsrel", 8, 2, "instruction", variant="corrected_cfs_released",
         extra=("adapter.cfs=released",), note="corrected layer with the released CFS formula"),
    _mix("mixrel_e8_r2_instr_alpha2r", 8, 2, "instruction", variant="released_alpha_2r", extra=("adapter.alpha=4",),
         released=True,
         note="released layer, instruction routing, alpha = 2r (the corrected multiplier, 2)"),
    _mix("ifs_e8_r2_instr", 8, 2, "instruction", variant="ifs_only", extra=("adapter.cfs=none",)),
    _mix("rand_e8_r2", 8, 2, "instruction", variant="random", extra=("adapter.routing_source=random",)),
    _mix("st_e8_r2_instr", 8, 2, "instruction", variant="straight_through",
         extra=("adapter.router_grad=straight_through",)),
    _mix("stdet_e8_r2_instr", 8, 2, "instruction", variant="straight_through_detached",
         extra=("adapter.router_grad=straight_through_detached",),
         note="learned routers, router input detached (no gradient into the hidden states through routing)"),
)

BY_NAME = {row.name: row for row in ROWS}
# The demo's reduced table: the ceiling, the interference reference and the headline comparison.
DEMO_ROWS = ("full_ft", "spec_lora_r2", "lora_r2", "mixc_e8_r2_instr")


def select_rows(names) -> list[Row]:
    """Rows by name, in the given order; ValueError naming the unknown ones and the valid names."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown testbed rows {unknown}; rows: {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]
