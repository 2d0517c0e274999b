#!/usr/bin/env python
"""Train a LLaVA-style model with LoRA / MixLoRA adapters: ``python train.py [group=option ...] [key=value ...]``,
the same as ``python -m mixlora.train.cli`` (the entry point lives in the package; its docstring lists the
commands). Config: configs/train.yaml; docs/training.md. Bad configuration or inputs stop with one message (exit
status 2) before any heavy work.
"""

from mixlora.train.cli import cli

if __name__ == "__main__":
    cli()
