"""Shared by the model-stack tests (test_model.py, test_model_parts.py, test_decode_cache.py): the tiny LLaVA
stack with its token ids, prompts laid out as the data pipeline lays them out, padded batches, seeded pixels, and
the tiny stack with MixLoRA E4/r2 and random B. Input ids are plain integers (no tokenizer needed).
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mixlora.model import build_tiny_llava  # noqa: E402


VOCAB, PAD, BOS, IMG = 512, 0, 1, 5
N = 64  # (64 / 8) ** 2 patches in the tiny towers


def tiny(**kwargs):
    # eos_token_id=None: random weights would otherwise stop some rows early and make lengths differ.
    args = dict(vocab_size=VOCAB, image_token_id=IMG, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=None)
    args.update(kwargs)
    return build_tiny_llava(**args)


def prompt(before: list[int], after: list[int]) -> list[int]:
    """BOS, text ids, N image tokens, text ids (as the data pipeline lays out a prompt)."""
    return [BOS, *before, *([IMG] * N), *after]


def pad_batch(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        sl = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[i, sl] = torch.tensor(row)
        mask[i, sl] = 1
    return ids, mask


def pixels(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def mixlora_model(**config):
    from mixlora import AdapterConfig

    model = tiny()
    cfg = dict(kind="mixlora", rank=2, num_factors=4, alpha=4.0, routing_tokens="prompt", decode_routing="prefill")
    cfg.update(config)
    adapters = seeded_adapters(model, AdapterConfig(**cfg))
    return model.eval(), adapters


def seeded_adapters(model, config) -> dict:
    """Inject ``config`` into ``model.llm`` with the same pools and routers whatever ran before (seed 0), then give
    every adapter a random B (0.3 · N(0, 1), seed 1): B starts at zero, and a random B makes every factor choice
    change the output."""
    from mixlora import inject_adapters

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapters = inject_adapters(model.llm, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in adapters.values():
            module.lora_b.copy_(0.3 * torch.randn(module.lora_b.shape, generator=g))
    return adapters
