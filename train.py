#!/usr/bin/env python
"""Train a LLaVA-style model with LoRA / MixLoRA adapters (Hydra; configs/train.yaml; docs/training.md).

    python train.py                                          # tiny CPU demo: MixLoRA on the synthetic suite
    python train.py experiment=tiny_lora_r4 trainer.max_steps=50
    python train.py output_dir=runs/a trainer.save_every=20 resume=true
    torchrun --nproc_per_node 4 train.py experiment=t1_mixlora_e16_r4 model.paths.llm=... data.image_folder=...
    deepspeed --no_local_rank --num_gpus 4 train.py trainer=zero3 ...

Bad configuration or inputs stop with one message (exit status 2) before any heavy work.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

import mixlora.train  # registers the config resolvers before Hydra composes

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the local BPE is trained before DataLoader workers fork
log = logging.getLogger("train")


def _output_dir_override(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in overrides)


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    if not _output_dir_override(overrides):
        # The timestamp default is resolved once by Hydra: use its value (a second resolution could tick over),
        # and in sweeps each job's own folder.
        cfg.output_dir = hc.runtime.output_dir
    elif hc.mode == RunMode.MULTIRUN:
        log.warning("output_dir is set in a --multirun: every job writes to %s unless it varies per job",
                    cfg.output_dir)
    try:
        summary = mixlora.train.run(cfg, overrides)
    except mixlora.train.ConfigError as err:
        log.error("%s", err)
        print(f"train.py: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    return summary.get("loss_last10_mean")  # the value a Hydra sweeper would minimise


if __name__ == "__main__":
    main()
