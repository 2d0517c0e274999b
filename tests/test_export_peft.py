"""mixlora.export_peft against peft itself: a LoRA run exported as a peft adapter, and merged.

References are independent of the export: peft 0.21's own ``save_pretrained`` names and shapes for the same
LoraConfig, peft's ``PeftModel.from_pretrained`` loading the export onto a fresh copy of the run's base LLM, and
peft's ``merge_and_unload``; our side is the run reloaded by ``mixlora.build.load_run``. Runs are tiny LoRA runs
trained for 2 steps whose ``lora_b`` is then set to random values (trained for 2 steps it is still near zero, and
an adapter that barely moves the logits would make the comparison vacuous); one run uses a layer range and a
subset of the projections, one is built on a local LLM folder (the configs/model/llava_v1_vicuna7b.yaml path) so
that peft loads the adapter onto the folder that ``base_model_name_or_path`` names.

Tolerance (float32, u = 2⁻²⁴ ≈ 6e-8). Both sides compute the same function in another order: ours adds
(alpha/r)·(x Aᵀ) Bᵀ into the base output in place, peft adds lora_B(lora_A(x))·scaling after it; a merged weight
rounds W + s·BᵀA once. Each adapted linear then differs by a few ulps of its output (sums of d_in ≤ 384 terms
rounded in another order: ≲ √d_in · u ≈ 1.2e-6 relative in practice). The tiny Llama has 2 layers of 7 adapted
linears, RMSNorm, softmax attention and the 128-wide lm_head between them, none of which amplifies a relative
perturbation by more than O(10) here, so the logits should agree to ~14 · 10 · 1.2e-6 ≈ 2e-4 relative to their
scale at worst. We allow 2e-4 · max|logit| and check that the adapter moves the logits by far more than that.
(Measured on this CPU: peft vs ours 0, the merged model vs ours ≈ 4e-7 with logits of magnitude ≈ 1.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import ROOT, local_checkpoints, suite, train  # noqa: E402,F401  (shared helpers and fixture)

from mixlora.export_peft import ExportError, export_peft, main  # noqa: E402

REL_TOL = 2e-4  # × max|logit|; see the module docstring
RUNS = {
    # every projection of both layers, r=4, alpha=8
    "full": ("adapter=lora", "adapter.rank=4"),
    # a layer range and a subset of the projections, r=2, alpha=4
    "ranged": ("adapter=lora", "adapter.rank=2", "adapter.layers=[1,2]",
               "adapter.target_modules=[q_proj,v_proj,down_proj]"),
}


def randomise_lora_b(run: Path) -> None:
    """Give the run's adapter a random lora_b (seeded) and save it back with mixlora.save_adapter."""
    from mixlora import save_adapter
    from mixlora.build import load_run
    from mixlora.inject import adapter_modules

    stack, _ = load_run(run)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in adapter_modules(stack.model.llm).values():
            module.lora_b.copy_(0.1 * torch.randn(module.lora_b.shape, generator=g))
    save_adapter(stack.model.llm, run)


@pytest.fixture(scope="module")
def runs(suite, tmp_path_factory):
    made = {}
    for name, overrides in RUNS.items():
        out = tmp_path_factory.mktemp(f"lora_{name}") / "run"
        train(suite, out, *overrides, "trainer.max_steps=2")
        randomise_lora_b(out)
        made[name] = out
    return made


def fresh_base(run: Path):
    """A fresh copy of the run's base LLM (no adapter), built from the run's config like load_run builds it."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from mixlora.build import build_stack

    cfg = OmegaConf.load(run / "config.yaml")
    return build_stack(cfg.model, AutoTokenizer.from_pretrained(str(run / "tokenizer"))).model.llm.eval()


def ours(run: Path):
    from mixlora.build import load_run

    return load_run(run)[0].model.llm.eval()


def input_ids(llm) -> torch.Tensor:
    vocab = llm.get_input_embeddings().num_embeddings
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logits(llm, ids: torch.Tensor) -> torch.Tensor:
    return llm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def assert_close_logits(got: torch.Tensor, want: torch.Tensor, base: torch.Tensor, what: str) -> float:
    tol = REL_TOL * want.abs().max().item()
    diff = (got - want).abs().max().item()
    moved = (want - base).abs().max().item()
    print(f"{what}: max |Δlogit| = {diff:.3g} (tolerance {tol:.3g}; the adapter moves logits by {moved:.3g})")
    assert moved > 100 * tol, "the adapter barely changes the logits: the comparison would be vacuous"
    assert diff <= tol, f"{what}: max |Δlogit| {diff:.3g} > {tol:.3g}"
    return diff


@pytest.mark.parametrize("name", list(RUNS))
def test_exported_adapter_loads_in_peft_with_our_logits(runs, name, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer

    run = runs[name]
    meta = json.loads((run / "adapter_config.json").read_text())
    out = tmp_path / "peft"
    summary = export_peft(run, out)
    assert summary["kind"] == "peft_adapter" and any("projector" in n for n in summary["notes"])

    # The config: the fields peft reads, each a LoraConfig field, with our values.
    written = json.loads((out / "adapter_config.json").read_text())
    assert set(written) <= set(LoraConfig.__dataclass_fields__), set(written) - set(LoraConfig.__dataclass_fields__)
    config = LoraConfig.from_pretrained(str(out))
    assert (config.peft_type.value, config.task_type, config.r, config.lora_alpha, config.lora_dropout) == \
        ("LORA", "CAUSAL_LM", meta["rank"], meta["alpha"], meta["dropout"])
    assert set(config.target_modules) == {m.rpartition(".")[2] for m in meta["modules"]}
    assert (config.bias, config.fan_in_fan_out, config.use_rslora, config.base_model_name_or_path) == \
        ("none", False, False, None)  # the tiny stack's LLM is built from a config: no folder
    assert config.layers_to_transform == (None if meta["layers"] is None else list(range(*meta["layers"])))

    # Names and shapes: what peft's own save_pretrained writes for this config on this base.
    reference = get_peft_model(fresh_base(run), config)
    reference.save_pretrained(str(tmp_path / "reference"))
    want = {k: tuple(v.shape) for k, v in load_file(str(tmp_path / "reference/adapter_model.safetensors")).items()}
    got = {k: tuple(v.shape) for k, v in load_file(str(out / "adapter_model.safetensors")).items()}
    assert got == want
    wrapped = {n for n, m in reference.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == set(meta["modules"])  # peft adapts exactly the modules we adapted

    # Loaded by peft onto a fresh base: our tensors exactly, B transposed, scaling alpha / r.
    mine = ours(run)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing adapter keys.*")
        theirs = PeftModel.from_pretrained(fresh_base(run), str(out)).eval()
    peft_layers = {n: m for n, m in theirs.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    assert set(peft_layers) == set(meta["modules"])
    for n, layer in peft_layers.items():
        adapter = mine.get_submodule(n)
        assert torch.equal(layer.lora_A["default"].weight, adapter.lora_a)
        assert torch.equal(layer.lora_B["default"].weight, adapter.lora_b.T)
        assert layer.scaling["default"] == meta["alpha"] / meta["rank"]

    ids = input_ids(mine)
    assert_close_logits(logits(theirs, ids), logits(mine, ids), logits(fresh_base(run), ids), f"peft vs ours [{name}]")

    # Alongside: the projector (unchanged), the tokenizer, a README that says where the projector lives.
    assert load_file(str(out / "projector.safetensors")).keys() == load_file(str(run / "projector.safetensors")).keys()
    assert all(torch.equal(a, load_file(str(run / "projector.safetensors"))[k])
               for k, a in load_file(str(out / "projector.safetensors")).items())
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(out))) == len(AutoTokenizer.from_pretrained(str(run / "tokenizer")))
    assert "projector.safetensors" in (out / "README.md").read_text()


def test_a_run_on_a_local_llm_folder_loads_onto_that_folder(suite, tmp_path):
    # The peft workflow proper: base_model_name_or_path is the run's LLM folder, and the adapter on the model
    # loaded from that folder by transformers gives the run's logits.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    paths = local_checkpoints(tmp_path, suite / "train.json")
    run = tmp_path / "run"
    train(suite, run, *paths, "adapter=lora", "adapter.rank=4", "trainer.max_steps=2")
    randomise_lora_b(run)
    out = tmp_path / "peft"
    assert export_peft(run, out)["base_model_name_or_path"] == str(tmp_path / "vicuna")
    base_path = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_path == str(tmp_path / "vicuna")

    def base():
        return AutoModelForCausalLM.from_pretrained(base_path, local_files_only=True).eval()

    mine = ours(run)
    theirs = PeftModel.from_pretrained(base(), str(out)).eval()
    ids = input_ids(mine)
    assert_close_logits(logits(theirs, ids), logits(mine, ids), logits(base(), ids), "peft on the folder vs ours")


def test_merge_writes_a_plain_llama_with_the_adapted_logits(runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    run = runs["ranged"]
    out = tmp_path / "merged"
    summary = export_peft(run, out, merge=True)
    assert summary["kind"] == "merged"
    merged = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert type(merged) is LlamaForCausalLM
    assert all(type(m).__module__.startswith(("torch.", "transformers.")) for m in merged.modules())
    assert not [n for n, _ in merged.named_parameters() if "lora" in n or "router" in n]

    mine = ours(run)
    ids = input_ids(mine)
    base = logits(fresh_base(run), ids)
    assert_close_logits(logits(merged, ids), logits(mine, ids), base, "merged vs ours")
    # Against peft's own merge of the exported adapter: the same weights, up to the rounding of W + s·BᵀA.
    export_peft(run, tmp_path / "peft")
    peft_merged = PeftModel.from_pretrained(fresh_base(run), str(tmp_path / "peft")).merge_and_unload().eval()
    theirs = dict(peft_merged.named_parameters())
    for n, p in merged.named_parameters():
        torch.testing.assert_close(p, theirs[n], rtol=0, atol=4 * 2 ** -24 * max(1.0, theirs[n].abs().max().item()))
    assert_close_logits(logits(merged, ids), logits(peft_merged, ids), base, "merged vs peft merge_and_unload")
    assert (out / "projector.safetensors").is_file() and (out / "tokenizer_config.json").is_file()


def test_mixlora_run_is_refused_on_the_command_line(runs, tmp_path):
    from mixlora import AdapterConfig, inject_adapters, save_adapter

    # A real MixLoRA adapter checkpoint on the same run layout.
    run = tmp_path / "mix"
    shutil.copytree(runs["full"], run)
    llm = fresh_base(run)
    inject_adapters(llm, AdapterConfig(kind="mixlora", num_factors=8, rank=4))
    save_adapter(llm, run)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mixlora.export_peft", str(run), str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "export_peft: error:" in proc.stderr and "'mixlora' run, not a LoRA run" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    assert main([str(run), str(out), "--merge"]) == 2 and not out.exists()


def test_out_is_replaced_only_with_overwrite_and_never_the_run(runs, tmp_path, capsys):
    run = runs["full"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty; pass --overwrite"):
        export_peft(run, out)
    assert main([str(run), str(out)]) == 2 and (out / "keep.txt").read_text() == "mine"
    assert "export_peft: error:" in capsys.readouterr().err

    assert main([str(run), str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "projector" in printed and str(run / "projector.safetensors") in printed
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left

    for target in (run, run.parent):  # the run itself, or a folder holding it
        with pytest.raises(ExportError, match="would replace the run"):
            export_peft(run, target, overwrite=True)
    assert (run / "adapter_model.safetensors").is_file()

    none = tmp_path / "none"  # an adapter=none run
    shutil.copytree(run, none)
    (none / "adapter_config.json").unlink()
    with pytest.raises(ExportError, match="holds no adapter"):
        export_peft(none, tmp_path / "x")
    with pytest.raises(ExportError, match="is not a run directory"):
        export_peft(tmp_path / "missing", tmp_path / "x")
