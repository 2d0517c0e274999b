"""Grids of rank x factors x variant as Hydra multiruns (``train.py --multirun``, run as its package entry point
``python -m mixlora.train.cli``), then eval.py (``python -m mixlora.tasks.cli``) on every job and
``python -m mixlora.tables.aggregate`` over them. The default grid is Table 1's (:func:`mixlora.tables.rows.grid`).

With the defaults it runs::

    python -m mixlora.train.cli --multirun experiment=paper_base resume=true hydra.sweep.dir=OUT \\
      adapter=mixlora_released,mixlora adapter.num_factors=16,32 adapter.rank=2,4,8 \\
      'adapter.alpha="${mul:2,${adapter.num_factors}}"' \\
      'hydra.sweep.subdir=${hydra:runtime.choices.adapter}_e${adapter.num_factors}_r${adapter.rank}' [overrides]

so every grid point gets its own run directory: OUT/mixlora_released_e16_r4 (as released), OUT/mixlora_e16_r4
(corrected), and with the ``lora`` variant a second multirun into OUT/lora_r<r> (alpha = 2r).
train.py runs under Hydra's launcher here, never under torchrun: one process per job (SLURM starts its tasks).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .runner import EVAL, TRAIN, TableError, environment, execute, show
from .rows import grid

ADAPTERS = {"released": "mixlora_released", "corrected": "mixlora"}
VARIANTS = (*ADAPTERS, "lora")
# Quoted for Hydra: the comma would otherwise split the value into sweep points; OmegaConf still resolves it.
ALPHAS = {"2E": 'adapter.alpha="${mul:2,${adapter.num_factors}}"', "2r": 'adapter.alpha="${mul:2,${adapter.rank}}"'}
HYDRA_LAUNCHERS = {"local": [], "submitit_local": ["hydra/launcher=local"], "slurm": ["hydra/launcher=slurm"]}
DEFAULTS = {k: ",".join(map(str, v)) for k, v in grid().items()}


def int_list(value: str, label: str) -> list[int]:
    """[16, 32] from '16,32'; TableError naming ``label`` otherwise."""
    parts = value.split(",")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise TableError(f"{label} must be a comma-separated list of positive integers, got '{value}'")
    return [int(p) for p in parts]


@dataclass
class Sweep:
    out: Path
    results: Path
    train_overrides: list[str] = field(default_factory=list)
    eval_overrides: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: ["released", "corrected"])
    factors: list[int] = field(default_factory=lambda: list(grid()["factors"]))
    ranks: list[int] = field(default_factory=lambda: list(grid()["ranks"]))
    lora_ranks: list[int] = field(default_factory=lambda: list(grid()["lora_ranks"]))
    alpha: str = "2E"
    base: str = "paper_base"
    launcher: str = "local"
    evaluate: bool = True
    python: str = sys.executable
    eval_device: str = "cpu"
    labels: dict[str, str] = field(default_factory=dict)  # option -> how the user named it (for messages)

    def label(self, name: str) -> str:
        return self.labels.get(name, f"--{name.replace('_', '-')}")

    def check(self) -> None:
        for variant in self.variants:
            if variant not in VARIANTS:
                raise TableError(f"{self.label('variants')}: '{variant}' is not one of {', '.join(VARIANTS)}")
        if not self.variants:
            raise TableError(f"{self.label('variants')} is empty; name released, corrected and/or lora")
        if self.alpha not in ALPHAS:
            raise TableError(f"{self.label('alpha')} must be 2E (as released) or 2r (LoRA's multiplier), "
                             f"got '{self.alpha}'")
        if self.launcher not in HYDRA_LAUNCHERS:
            raise TableError(f"{self.label('launcher')} must be local, submitit_local or slurm, got '{self.launcher}'")
        if any(v in ADAPTERS for v in self.variants):
            for E in self.factors:
                for r in self.ranks:
                    if r >= E:
                        raise TableError(f"{self.label('ranks')} has r={r}, not below {self.label('factors')}' "
                                         f"E={E}: MixLoRA selects r of its E factors")

    def trainings(self) -> list[tuple[str, list[str], list[str]]]:
        """(tag, train.py multirun command, its job folders) of each multirun."""
        common = [self.python, *TRAIN, "--multirun", f"experiment={self.base}", "resume=true",
                  f"hydra.sweep.dir={self.out}", *HYDRA_LAUNCHERS[self.launcher]]
        out = []
        adapters = [ADAPTERS[v] for v in self.variants if v in ADAPTERS]
        if adapters:
            command = [*common, f"adapter={','.join(adapters)}", f"adapter.num_factors={_csv(self.factors)}",
                       f"adapter.rank={_csv(self.ranks)}", ALPHAS[self.alpha],
                       "hydra.sweep.subdir=${hydra:runtime.choices.adapter}_e${adapter.num_factors}_r${adapter.rank}",
                       *self.train_overrides]
            jobs = [f"{a}_e{E}_r{r}" for a in adapters for E in self.factors for r in self.ranks]
            out.append(("train (MixLoRA grid)", command, jobs))
        if "lora" in self.variants:
            command = [*common, "adapter=lora", f"adapter.rank={_csv(self.lora_ranks)}",
                       "hydra.sweep.subdir=lora_r${adapter.rank}", *self.train_overrides]
            out.append(("train (LoRA grid)", command, [f"lora_r{r}" for r in self.lora_ranks]))
        return out


def _csv(values: list[int]) -> str:
    return ",".join(map(str, values))


def run_sweep(sweep: Sweep, dry_run: bool = False) -> int:
    """Print and (unless ``dry_run``) run every multirun, then evaluate and aggregate; the first failure stops."""
    sweep.check()
    if sweep.launcher != "local" and not dry_run and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") \
            is None:
        raise TableError(f"{sweep.label('launcher')}={sweep.launcher} needs the Hydra submitit plugin (requirements"
                         ".txt): pip install hydra-submitit-launcher==1.2.0 submitit==1.5.4")
    env = environment()
    jobs = []
    for tag, command, folders in sweep.trainings():
        show(tag, command)
        if not dry_run and (code := execute(command, env)):
            return code
        jobs += folders
    if not sweep.evaluate:
        return 0
    for job in jobs:
        command = [sweep.python, *EVAL, f"run={sweep.out / job}", f"device={sweep.eval_device}",
                   *sweep.eval_overrides]
        show(f"[{job}] eval", command)
        if not dry_run and (code := execute(command, env)):
            return code
    command = [sweep.python, "-m", "mixlora.tables.aggregate", *[str(sweep.out / job) for job in jobs], "--out",
               str(sweep.results)]
    show("aggregate", command)
    return 0 if dry_run else execute(command, env)
