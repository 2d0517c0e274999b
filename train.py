#!/usr/bin/env python
"""Train a LLaVA-style model with LoRA / MixLoRA adapters (Hydra; configs/train.yaml; docs/training.md).

The same as ``python -m mixlora.train.cli`` (the entry point lives in the package, so an installed package
needs no checkout).

    python train.py                                          # tiny CPU demo: MixLoRA on the synthetic suite
    python train.py experiment=tiny_lora_r4 trainer.max_steps=50
    python train.py output_dir=runs/a trainer.save_every=20 resume=true
    torchrun --nproc_per_node 4 train.py experiment=t1_mixlora_e16_r4 model.paths.llm=... data.image_folder=...
    deepspeed --no_local_rank --num_gpus 4 train.py trainer=zero3 ...

Bad configuration or inputs stop with one message (exit status 2) before any heavy work.
"""

from mixlora.train.cli import cli

if __name__ == "__main__":
    cli()
