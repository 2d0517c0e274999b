"""The training entry point: ``python train.py ARGS`` (a checkout) = ``python -m mixlora.train.cli ARGS`` (any install).

Hydra composes ``train.yaml`` of the shipped config tree (``mixlora.train.config.shipped_config_dir``).

    python train.py                                          # tiny CPU demo: MixLoRA on the synthetic suite
    python train.py experiment=tiny_lora_r4 trainer.max_steps=50
    python train.py output_dir=runs/a trainer.save_every=20 resume=true
    torchrun --nproc_per_node 4 train.py experiment=t1_mixlora_e16_r4 model.paths.llm=... data.image_folder=...
    torchrun --nproc_per_node 4 -m mixlora.train.cli experiment=...     # the same without a checkout
    deepspeed --no_local_rank --num_gpus 4 train.py trainer=zero3 ...

Bad configuration or inputs stop with one message (exit status 2) before any heavy work.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

import mixlora.train  # registers the config resolvers and schemas before Hydra composes
from mixlora.train.config import shipped_config_dir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the local BPE is trained before DataLoader workers fork
log = logging.getLogger("train")


def _output_dir_override(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in overrides)


def _output_dir_refusal(argv: list[str]) -> str | None:
    """The error for an ``output_dir=`` argument that is, or lies under, an existing file; None if fine.

    Checked before Hydra starts: Hydra creates its run directory (= output_dir) before main() runs, so it would
    fail first, with a traceback.
    """
    from pathlib import Path

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    for arg in argv:
        if not _output_dir_override([arg]):
            continue
        try:
            value = OverridesParser.create().parse_overrides([arg])[0].value()
        except OverrideParseException:
            return None  # bad override syntax: Hydra reports it itself, with its grammar help
        if isinstance(value, str):  # not a sweep (a,b) or a deletion
            for path in (Path(value), *Path(value).parents):
                if path.exists() and not path.is_dir():
                    return f"output_dir={value!r}: {str(path)!r} exists and is not a folder; choose another output_dir"
    return None


@hydra.main(config_path=str(shipped_config_dir()), config_name="train", version_base=None)
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
    from mixlora.data.dataset import DataError

    try:
        summary = mixlora.train.run(cfg, overrides)
    except (mixlora.train.ConfigError, DataError) as err:  # DataError: a bad file or record found while loading
        log.error("%s", err)
        print(f"train.py: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    return summary.get("loss_last10_mean")  # the value a Hydra sweeper would minimise


def cli() -> None:
    """``python train.py ARGS`` / ``python -m mixlora.train.cli ARGS``: refuse a bad output_dir, then Hydra."""
    refusal = _output_dir_refusal(sys.argv[1:])
    if refusal is not None:
        print(f"train.py: error: {refusal}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
