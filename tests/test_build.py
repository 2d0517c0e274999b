"""Stack building from model configs, and run directories that reload to the same model.

The real-weights config (configs/model/llava_v1_vicuna7b.yaml) is exercised through the same code path with
tiny local checkpoints: a saved CLIPVisionModel, a saved Llama, the model's own tokenizer folder and a LLaVA
mm_projector.bin.
"""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import CLIPVisionConfig, CLIPVisionModel

from mixlora import AdapterConfig, MixLoRALinear, inject_adapters
from mixlora.build import build_stack, build_tokenizer_from_config, load_run, save_run
from mixlora.data.dataset import DataError
from mixlora.model.llm import build_llm
from mixlora.model.tiny import tiny_clip_vision_config, tiny_llm_config

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests/fixtures/data/vision_flan/annotation_191-task_1k.json"


def tiny_model_cfg():
    return OmegaConf.load(ROOT / "configs/model/tiny.yaml")


def test_tiny_stack_from_config_and_run_round_trip(tmp_path):
    cfg = tiny_model_cfg()
    tok = build_tokenizer_from_config(cfg.tokenizer, [CORPUS], cache_dir=tmp_path / "cache")
    stack = build_stack(cfg, tok)
    model = stack.model
    assert model.num_image_tokens == 64 and stack.image_processor.image_size == 64
    assert model.llm.get_input_embeddings().num_embeddings == len(tok)
    inject_adapters(model.llm, AdapterConfig(num_factors=4, rank=2))
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.llm.modules():
            if isinstance(m, MixLoRALinear):
                m.lora_b.normal_()
        for p in model.projector.parameters():
            p.add_(0.1)  # a "trained" projector differs from the seeded init
    run = save_run(tmp_path / "run", stack, OmegaConf.create({"model": cfg}))
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "tokenizer", "adapter_config.json",
                                               "adapter_model.safetensors", "projector.safetensors"}

    loaded, loaded_cfg = load_run(run)
    assert loaded_cfg.model.builder.seed == 0
    ids = torch.tensor([[1] + [tok.convert_tokens_to_ids("<image>")] * 64 + [7, 8, 9]])
    pixels = torch.randn(1, 3, 64, 64)
    mask = torch.ones_like(ids, dtype=torch.bool)
    model.eval()
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, routing_mask=mask).logits
        b = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                         routing_mask=mask).logits
    torch.testing.assert_close(a, b)


def test_missing_run_and_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        load_run(tmp_path)
    with pytest.raises(DataError, match="none.json does not exist .*make_synthetic.py"):
        build_tokenizer_from_config(tiny_model_cfg().tokenizer, [tmp_path / "none.json"])
    with pytest.raises(ValueError, match="kind='sentencepiece' is not a valid option"):
        build_tokenizer_from_config({"kind": "sentencepiece"}, [CORPUS])


def test_real_weights_config_path_with_tiny_local_checkpoints(tmp_path):
    """configs/model/llava_v1_vicuna7b.yaml: local folders only, tokenizer from the LLM folder, <image> resize."""
    tok = build_tokenizer_from_config({"kind": "local_bpe", "vocab_size": 400}, [CORPUS])
    llm_dir, clip_dir = tmp_path / "vicuna", tmp_path / "clip"
    llm = build_llm(config=tiny_llm_config(vocab_size=len(tok) - 1, hidden_size=64, num_layers=2, num_heads=4))
    llm.save_pretrained(llm_dir)  # one row short: loading must resize to the tokenizer's vocabulary
    tok.save_pretrained(llm_dir)
    CLIPVisionModel(CLIPVisionConfig(**tiny_clip_vision_config())).save_pretrained(clip_dir)
    w = torch.randn(64, 64)
    torch.save({"model.mm_projector.weight": w.half(), "model.mm_projector.bias": torch.zeros(64).half()},
               tmp_path / "mm_projector.bin")

    cfg = OmegaConf.load(ROOT / "configs/model/llava_v1_vicuna7b.yaml")
    cfg.paths.llm, cfg.paths.vision, cfg.paths.projector = str(llm_dir), str(clip_dir), str(tmp_path / "mm_projector.bin")
    cfg.builder.llm.dtype = "float32"
    real_tok = build_tokenizer_from_config(cfg.tokenizer)
    stack = build_stack(cfg, real_tok)
    assert stack.model.llm.get_input_embeddings().num_embeddings == len(real_tok)
    assert torch.equal(stack.model.projector.weight, w.half().float())
    assert stack.model.num_image_tokens == 64
