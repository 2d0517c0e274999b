"""Shared by the training tests (test_train.py, test_train_loop.py and the tests of distributed, bf16, cluster,
export and safety runs): a small synthetic suite, the overrides of a fast run on it, the run itself composed
through Hydra as `python train.py OVERRIDES` composes it, its metrics records, and tiny stand-ins for the
paper's local checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixlora.train import compose_config, run


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.base_mix import split_base_mix
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=1, stage1_size=8, seen_per_task=1,
                   progress=False)
    split_base_mix(out, base_per_task=2)  # base_mix.json / stage2.json, as the demo's experiments name them
    return out


def small(suite: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a fast run: the small suite, micro batch 4, accumulation 2, no wandb, no bar."""
    return [f"output_dir={out}", f"data.annotations={suite / 'train.json'}", f"data.image_folder={suite / 'images'}",
            "data.generate=null", "logger=disabled", "trainer.progress_bar=false", "trainer.micro_batch_size=4",
            "trainer.global_batch_size=8", "trainer.schedule_steps=20", "trainer.save_every=0", *extra]


def train(suite, out, *extra):
    return run(compose_config(small(suite, out, *extra)))


def process_env() -> dict:
    """The environment of a ``python train.py`` child process: offline, no tokenizer threads."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def train_process(suite, out, *extra) -> subprocess.CompletedProcess:
    """``python train.py OVERRIDES`` in a child process, which must succeed.

    The reference of a test whose other runs are child processes (killed and resumed ones) must be one too:
    a bit-for-bit comparison holds only between runs with the same torch thread count (1 and 2 threads give
    weights that differ by ~1e-6, since the matrix products split their sums differently), and a child takes
    torch's default while the test process may not have it (a benchmark's ``main()`` called in-process sets it;
    tests/conftest.py restores it after each test, this keeps the comparison independent of that)."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *small(suite, out, *extra)], env=process_env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def loss_on_first_samples(stack, suite: Path, n: int = 4) -> float:
    """The loss of ``stack`` (no grad) on the first ``n`` training samples of ``suite``, collated as training
    collates them: the batch a run's ``check_loss`` is computed on (mixlora.train's summary)."""
    from mixlora.data.collator import TrainingCollator
    from mixlora.data.dataset import ConversationDataset

    ds = ConversationDataset(str(suite / "train.json"), stack.tokenizer, stack.image_processor,
                             stack.model.num_image_tokens, image_folder=str(suite / "images"), max_length=256)
    batch = TrainingCollator(stack.tokenizer.pad_token_id)([ds[i] for i in range(n)])
    with torch.no_grad(), stack.model.routing(batch["routing_mask"]):
        return float(stack.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 pixel_values=batch["pixel_values"], labels=batch["labels"]).loss)


def local_checkpoints(folder: Path, corpus: Path) -> list[str]:
    """Tiny stand-ins for the paper's local checkpoints (Vicuna folder with its tokenizer, CLIP folder, LLaVA
    mm_projector.bin), as the overrides of configs/model/llava_v1_vicuna7b.yaml."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mixlora.build import build_tokenizer_from_config
    from mixlora.model.llm import build_llm
    from mixlora.model.tiny import tiny_clip_vision_config, tiny_llm_config

    tok = build_tokenizer_from_config({"kind": "local_bpe", "vocab_size": 400}, [corpus])
    llm_dir, clip_dir, projector = folder / "vicuna", folder / "clip", folder / "mm_projector.bin"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_llm(config=tiny_llm_config(vocab_size=len(tok), hidden_size=64, num_layers=2,
                                         num_heads=4)).save_pretrained(llm_dir)
        CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())).save_pretrained(clip_dir)
        torch.save({"model.mm_projector.weight": (0.05 * torch.randn(64, 64)).half(),
                    "model.mm_projector.bias": torch.zeros(64).half()}, projector)
    tok.save_pretrained(llm_dir)
    return ["model=llava_v1_vicuna7b", f"model.paths.llm={llm_dir}", f"model.paths.vision={clip_dir}",
            f"model.paths.projector={projector}", "model.builder.llm.dtype=float32"]
