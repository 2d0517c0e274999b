"""scripts/memory_plan.py: exact parameter counts on the meta device and the ZeRO-2/3 per-GPU byte arithmetic.

References are hand-counted: adapter parameters from the layer shapes (LoRA r·(d_in + d_out); MixLoRA pools
E·(d_in + d_out), routers router_a/router_b E·d_in each, CFS W_AB r·d_in·E), base models from the LLaMA and CLIP
layer formulas, bytes from the ZeRO rules (bf16 weight/gradient 2 B, fp32 master/exp_avg/exp_avg_sq 4 B each).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "memory_plan.py"

# Tiny shapes: LLaMA d=32, f=48, 2 layers, 4 heads (no GQA), vocab 100 (+1 <image>); CLIP ViT d=16, f=32,
# 1 layer, 28 px / patch 14 = 4 patches; linear projector 16 -> 32.
D, F, L, V = 32, 48, 2, 101
DV, FV, P = 16, 32, 4
TINY_LLM = {"model_type": "llama", "hidden_size": D, "intermediate_size": F, "num_hidden_layers": L,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": V - 1, "tie_word_embeddings": False}
TINY_VISION = {"hidden_size": DV, "intermediate_size": FV, "num_hidden_layers": 1, "num_attention_heads": 2,
               "image_size": 28, "patch_size": 14}
LLM_PARAMS = 2 * V * D + L * (4 * D * D + 3 * D * F + 2 * D) + D  # embed + head + layers + final norm = 24032
VISION_PARAMS = (DV + 3 * 14 * 14 * DV + (P + 1) * DV + 2 * DV  # class, patch conv, positions, pre-norm
                 + 4 * (DV * DV + DV) + 2 * 2 * DV + (DV * FV + FV) + (FV * DV + DV)  # one block
                 + 2 * DV)  # post-norm: 11792
PROJECTOR = DV * D + D  # 544


def _load():
    spec = importlib.util.spec_from_file_location("memory_plan", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mp():
    return _load()


def _tiny(mp, adapter=None, train_llm=False):
    model = mp.build_meta_model(TINY_LLM, TINY_VISION, V)
    return mp.prepare(model, adapter, train_llm)


def test_base_counts_on_meta(mp):
    counts, tensors, _ = _tiny(mp)
    assert (LLM_PARAMS, VISION_PARAMS, PROJECTOR) == (24032, 11792, 544)
    assert counts["llm"] == {"total": LLM_PARAMS, "trainable": 0}
    assert counts["vision"] == {"total": VISION_PARAMS, "trainable": 0}
    assert counts["projector"] == {"total": PROJECTOR, "trainable": PROJECTOR}
    assert sum(t.numel for t in tensors) == LLM_PARAMS + VISION_PARAMS + PROJECTOR


def test_lora_and_mixlora_counts(mp):
    from mixlora import AdapterConfig

    qv = ["q_proj", "v_proj"]  # both D -> D
    counts, _, _ = _tiny(mp, AdapterConfig(kind="lora", rank=4, alpha=8, target_modules=qv))
    lora = L * 2 * 4 * (D + D)  # 1024
    assert counts["pools"] == {"total": lora, "trainable": lora}
    assert counts["all"]["trainable"] == lora + PROJECTOR == 1568

    for grad in ("none", "straight_through"):
        counts, _, _ = _tiny(mp, AdapterConfig(kind="mixlora", num_factors=8, rank=2, alpha=4, cfs="paper",
                                               router_grad=grad, target_modules=qv))
        pools = L * 2 * 8 * (D + D)  # 2048
        routers = L * 2 * (2 * 8 * D + 2 * D * 8)  # router_a + router_b + W_AB [r, d_in, E]: 4096
        assert counts["pools"] == {"total": pools, "trainable": pools}
        assert counts["routers"] == {"total": routers, "trainable": routers if grad != "none" else 0}
        assert counts["all"]["trainable"] == pools + PROJECTOR + (routers if grad != "none" else 0)
    counts, _, _ = _tiny(mp, AdapterConfig(kind="mixlora", num_factors=8, rank=2, alpha=4, cfs="none",
                                           target_modules=qv))
    assert counts["routers"]["total"] == L * 2 * 2 * 8 * D  # no W_AB without CFS

    counts, _, _ = _tiny(mp, None, train_llm=True)  # full fine-tuning: every LLM weight + projector
    assert counts["all"]["trainable"] == LLM_PARAMS + PROJECTOR


def test_paper_architecture_counts(mp):
    """LLaMA-7B (+<image>) and CLIP ViT-L/14-224 on meta, LoRA r=4 on all seven projections."""
    from mixlora import AdapterConfig

    d, f, layers, vocab, dv, fv = 4096, 11008, 32, 32001, 1024, 4096
    counts, _, _ = mp.prepare(mp.build_meta_model(mp.LLAMA_7B, mp.CLIP_VIT_L14_224, vocab),
                              AdapterConfig(kind="lora", rank=4, alpha=8))
    assert counts["llm"]["total"] == 2 * vocab * d + layers * (4 * d * d + 3 * d * f + 2 * d) + d == 6_738_423_808
    clip = (dv + 3 * 14 * 14 * dv + 257 * dv + 2 * dv
            + 24 * (4 * (dv * dv + dv) + 4 * dv + dv * fv + fv + fv * dv + dv) + 2 * dv)
    assert counts["vision"]["total"] == clip == 303_179_776
    per_layer = 4 * (d + d) + 2 * (d + f) + (f + d)  # q,k,v,o; gate, up; down
    assert counts["pools"]["trainable"] == layers * 4 * per_layer == 9_994_240


def test_zero_arithmetic_by_hand(mp):
    T = mp.Tensor
    tensors = [T(10, 2, False), T(7, 1, False), T(100, 2, True), T(6, 1, True)]
    # ZeRO-2, G=4: frozen 17 el whole; groups (2-D) 100 -> 104, (1-D) 6 -> 8 (multiples of 2G = 8); owned 112/4.
    z2 = mp.zero2_states(tensors, 4)
    assert z2 == {"frozen_weights": 34, "trainable_weights": 224, "gradients": 56, "fp32_master": 112,
                  "exp_avg": 112, "exp_avg_sq": 112, "total": 650, "step_fp32_grad": 112}
    # ZeRO-3, G=4, persistence threshold 8: frozen ceil(10/4)=3 + ceil(7/4)=2 + 7 whole = 12 el; trainable
    # ceil(100/4)=25 + ceil(6/4)=2 + 6 whole = 33 el; owned partition 25 + 2 = 27 el.
    z3 = mp.zero3_states(tensors, 4, persistence_threshold=8)
    assert z3 == {"frozen_weights": 24, "trainable_weights": 66, "gradients": 54, "fp32_master": 108,
                  "exp_avg": 108, "exp_avg_sq": 108, "total": 468, "step_fp32_grad": 108}


def test_zero_arithmetic_on_the_tiny_lora_model(mp):
    from mixlora import AdapterConfig

    _, tensors, _ = _tiny(mp, AdapterConfig(kind="lora", rank=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    frozen = LLM_PARAMS + VISION_PARAMS  # 35824 bf16 elements
    # trainable groups: 2-D = LoRA 1024 + projector weight 512 = 1536; 1-D = projector bias 32
    z2 = mp.zero2_states(tensors, 4)  # 2G = 8 divides both: 1568 el, 392 owned
    assert (z2["frozen_weights"], z2["trainable_weights"], z2["gradients"], z2["fp32_master"]) == \
        (2 * frozen, 2 * 1568, 2 * 392, 4 * 392)
    assert z2["total"] == 2 * frozen + 2 * 1568 + 14 * 392 == 80272
    z2 = mp.zero2_states(tensors, 3)  # 2G = 6: 1536 stays, 32 -> 36: 1572 el, 524 owned
    assert z2["total"] == 2 * frozen + 2 * 1572 + 14 * 524 == 82128
    z3 = mp.zero3_states(tensors, 1, persistence_threshold=0)  # one GPU, no persistence: whole tensors
    assert z3["total"] == 2 * frozen + 16 * 1568 == 96736


@pytest.fixture(scope="module")
def tiny_run(mp, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    (out / "llm.json").write_text(json.dumps(TINY_LLM))
    (out / "clip.json").write_text(json.dumps({"model_type": "clip", "vision_config": TINY_VISION}))
    argv = ["--llm-config", str(out / "llm.json"), "--vision-config", str(out / "clip.json"), "--gpus", "4", "8",
            "--gpu-memory-gb", "80", "1e-6", "--json", str(out / "plan.json"), "--md", str(out / "plan.md")]
    result, report = mp.plan(argv)
    return result, report, out


def test_every_table1_row_is_reported(tiny_run):
    result, report, out = tiny_run
    names = sorted(p.stem for g in ("t1_*.yaml", "t1c_*.yaml") for p in (ROOT / "configs/experiment").glob(g))
    assert len(names) == 5 + 6 + 6
    for name in names + ["LLaVA_FT"]:
        assert f"| {name} |" in report
    assert sorted(r["row"] for r in result["rows"]) == sorted(names + ["LLaVA_FT"])
    assert (out / "plan.md").read_text() == report and report.count("Command: `python scripts/memory_plan.py")
    saved = json.loads((out / "plan.json").read_text())
    rows = {r["row"]: r for r in saved["rows"]}
    per_layer = 4 * 4 * (D + D) + 2 * 4 * (D + F) + 4 * (F + D)  # LoRA r=4 on q,k,v,o, gate, up, down
    assert rows["t1_lora_r4"]["trainable"] == L * per_layer + PROJECTOR == 4512
    assert rows["LLaVA_FT"]["trainable"] == LLM_PARAMS + PROJECTOR
    assert rows["t1_lora_r4"]["optimizer_state_bytes"] == 12 * 4512
    states = rows["t1_lora_r4"]["per_gpu"]["zero3_4gpu"]
    assert states["fits_gib"] == {"80": True, "1e-06": False}


@pytest.mark.parametrize("argv", [["--rows", "no_such_row*"], ["--gpus", "0"], ["--gpu-memory-gb", "-1"],
                                  ["--llm-config", "{tmp}/missing.json"]])
def test_bad_input_exits_2(mp, argv, capsys, tmp_path):
    assert mp.main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert "memory_plan:" in capsys.readouterr().err
