"""Shared by the evaluation tests (test_eval.py, test_tasks.py, test_lmms_plugin.py, test_bf16.py): the prompt
strings written out literally, eval.py loaded as a module and its Hydra config composed, a small synthetic suite
with the tiny stack built on it, and the environment of eval.py subprocesses.

The prompt strings are the released templates' text copied by hand (the Vicuna system line and the short-answer
suffix), not read from the code under test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mixlora.build import build_stack, build_tokenizer_from_config
from mixlora.data.synthetic import generate_suite


ROOT = Path(__file__).resolve().parents[1]
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
SHORT = "Answer the question using a single word or phrase."


def load_eval_script():
    spec = importlib.util.spec_from_file_location("mixlora_eval_script", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_eval(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="eval", overrides=overrides)


# ---------------------------------------------------------------- shared tiny setup


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A small synthetic suite (same generator and formats as data/synthetic)."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_suite(root, seed=0, per_task=2, eval_per_task=6, mme_images=2, stage1_size=0, progress=False)
    return root


@pytest.fixture(scope="module")
def stack(suite):
    cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    tok = build_tokenizer_from_config(cfg.tokenizer, [suite / "train.json"])
    return build_stack(cfg, tok)


def tiny_mixlora_stack(suite, adapter_config):
    """The tiny stack (configs/model/tiny.yaml, tokenizer built on ``suite``) with ``adapter_config`` injected and
    every MixLoRA B drawn from N(0, 0.5²) after seed 0. Returns (the model config, the stack)."""
    import torch

    from mixlora import MixLoRALinear, inject_adapters

    cfg = OmegaConf.load(ROOT / "configs/model/tiny.yaml")
    stack = build_stack(cfg, build_tokenizer_from_config(cfg.tokenizer, [suite / "train.json"]))
    inject_adapters(stack.model.llm, adapter_config)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in stack.model.llm.modules():
            if isinstance(m, MixLoRALinear):
                m.lora_b.normal_(std=0.5)
    return cfg, stack


def _env():
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
