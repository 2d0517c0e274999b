"""bf16 end to end on the CPU: the adapter layers under autocast, training (plain loop and DeepSpeed ZeRO-2/3, one
and two processes), exact resume, and eval.py on a bf16-trained run.

References are independent of the code under test: float64 evaluations of the layer formulas, fp32 runs of the
same configuration, uninterrupted bf16 runs for resume, and a plain ``model.generate`` call on a literal prompt.

Numbers used below. bf16 keeps 8 significant bits, so round-to-nearest commits a relative error of at most
u = 2⁻⁸ ≈ 3.9e-3 per rounding (the unit roundoff used throughout). γ_n = n·u / (1 − n·u) bounds the relative
error of a chain of n such roundings (Higham, Accuracy and Stability of Numerical Algorithms, §3.1).

Loss trajectories (``assert_losses_close``): |L_bf16(t) − L_fp32(t)| ≤ u · L_fp32(t) at every logged step t, i.e.
≈ 0.026 at the tiny stack's L ≈ 6.5. The argument (an estimate, not a worst-case bound: a rigorous bound grows
like d·u per matmul compounded over the ~15 matmul layers and would be vacuous):

1. What is rounded. The runs keep fp32 master weights, an fp32 optimiser and an fp32 loss. bf16 enters as the
   rounding of the operands and results of the matmul-like ops (linear, matmul, bmm, attention; autocast casts
   the fp32 weights per op, DeepSpeed holds the module in bf16), each a relative error ≤ u; the CPU kernels
   accumulate those sums in fp32, and the LLM upcasts its RMSNorm and the cross-entropy logits to fp32.
2. Step 1 (identical weights and batches) sees only that forward rounding. The per-token loss
   ℓ = logsumexp(z) − z_y moves by δℓ = Σ_j (p_j − [j = y]) δz_j, a zero-sum weighting of the logit errors. The
   roundings behind a logit have no common sign, so they cancel in that sum and again in the mean over the
   batch's target tokens instead of adding up: |δL| ≪ u·L (measured ≈ 1e-4, u·L / 250).
3. Later steps add the divergence of the weights. Adam normalises every update to ≈ lr per element whatever the
   gradient's scale, so a gradient with a relative error ~u changes an update by ~u·lr; an element whose gradient
   lies within rounding of zero may flip its update's sign (bounded by Adam's step bound, checked for every
   element by ``assert_weights_within_adam_bound``), but it carries ≈ zero gradient, so its effect on the loss is
   second order. Over ≤ 6 steps at lr ≤ 1e-3 the loss difference stays well inside u·L (measured on the tiny
   MixLoRA stack over 6 steps: plain autocast ≤ 2.8e-3, ZeRO-2 ≤ 2.0e-3, ZeRO-3 ≤ 3.6e-3, i.e. ≤ u·L / 7).
4. It still detects a broken bf16 path: the fp32 loss falls by ≈ 0.2 (≈ 8·u·L) over 6 steps, so a bf16 run
   that does not train, follows another schedule or loses its updates fails, as does a crash or a non-finite loss.
   Over the 3 steps of the cheap default test the loss barely moves; there ``assert_trained_like_fp32`` checks
   that the bf16 run updated its factors at all.

PyTorch's CPU bf16 matmuls (oneDNN with AVX512-BF16/AMX, or its own fallback kernels on other CPUs) all round as
in 1. and accumulate in fp32, so another CPU differs from the measured one by reduction order only, far inside the
margin.

DeepSpeed runs happen in subprocesses, as in tests/test_train_distributed.py (whose helpers are reused).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mixlora import LoRALinear, MixLoRALinear
from mixlora.train import compose_config, run
from mixlora.train.validate import preflight

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_setup import metrics, small  # noqa: E402  (shared helpers of the train tests)
from test_train_distributed import RUNS_SCRIPT, adam_step_bound, ds_env, run_in_subprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
U = 2.0 ** -8  # bf16 unit roundoff
WEIGHT_FILES = ("adapter_model.safetensors", "projector.safetensors")


def gamma(n: int) -> float:
    """γ_n = n·u / (1 − n·u): the relative error bound of n chained bf16 roundings (module docstring)."""
    assert n * U < 1
    return n * U / (1 - n * U)


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in metrics(out)]


def assert_losses_close(bf16: Path, fp32: Path, steps: int) -> None:
    """Every logged loss of the bf16 run within u·L of the fp32 run's (module docstring), same LR schedule."""
    got, ref = losses(bf16), losses(fp32)
    assert len(got) == len(ref) == steps
    worst = max(abs(a - b) / b for a, b in zip(got, ref))
    assert worst <= U, f"{bf16.name}: bf16 losses {got} vs fp32 {ref}: relative {worst:.3g} > u = {U:.3g}"
    assert [r["lr"] for r in metrics(bf16)] == pytest.approx([r["lr"] for r in metrics(fp32)], rel=1e-12)


def assert_weights_within_adam_bound(bf16: Path, fp32: Path, stored_in_bf16: bool) -> None:
    """Every trained element of the bf16 run within 2·Σ_t lr_t·B(t) of the fp32 run's (each run moves each element
    by at most Σ_t lr_t·B(t) from the same start, B = Adam's step bound, for any gradients: no weight decay here),
    plus, when the saved weights are DeepSpeed's bf16 module copies of the fp32 master w, one rounding of it:
    |bf16(w) − w| ≤ 2⁻⁹·|w| ≤ u/2·(|w_fp32| + bound), within u·(|w_fp32| + bound)."""
    lrs = [r["lr"] for r in metrics(fp32)]
    bound = 2 * sum(lr * adam_step_bound(t) for t, lr in enumerate(lrs, start=1))
    for name in WEIGHT_FILES:
        x, y = load_file(str(fp32 / name)), load_file(str(bf16 / name))
        assert x.keys() == y.keys()
        for k in x:
            assert y[k].dtype == (torch.bfloat16 if stored_in_bf16 else torch.float32), (name, k, y[k].dtype)
            ref = x[k].double()
            allowed = bound + (U * (ref.abs() + bound) if stored_in_bf16 else 0.0)
            excess = float(((y[k].double() - ref).abs() - allowed).max())
            assert excess <= 0, f"{bf16.name}/{name} {k}: beyond Adam's step bound {bound:.3g} by {excess:.3g}"


def assert_trained_like_fp32(bf16: Path, fp32: Path) -> None:
    """The bf16 run moved the B factors (which start at exactly 0) towards the fp32 run's values:
    ‖B_bf16 − B_fp32‖ < ‖B_fp32 − 0‖. A run that lost its updates sits at equality (ratio 1); measured ratios are
    0.03 (LoRA) and 0.24-0.34 (MixLoRA, where Adam flips the sign of the first updates of near-zero gradients)."""
    x, y = load_file(str(fp32 / "adapter_model.safetensors")), load_file(str(bf16 / "adapter_model.safetensors"))
    keys = [k for k in x if k.endswith(".lora_b")]
    assert keys
    ref = torch.cat([x[k].double().flatten() for k in keys])
    got = torch.cat([y[k].double().flatten() for k in keys])
    assert float(ref.norm()) > 0 and float((got - ref).norm()) < float(ref.norm()), bf16.name


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights and logged losses (a resumed run against the uninterrupted one)."""
    assert losses(a) == losses(b)
    for name in WEIGHT_FILES:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from mixlora.data.synthetic import generate_suite

    out = tmp_path_factory.mktemp("synthetic")
    generate_suite(out, seed=0, per_task=4, eval_per_task=6, mme_images=1, stage1_size=0, progress=False)
    return out


# ---------------------------------------------------------------------------------------------- layers
def _reference(layer, x: torch.Tensor, g: torch.Tensor, absolute: bool):
    """float64 output of ``layer`` on ``x`` and the gradients of Σ g·y w.r.t. its factors, from the formula
    y = W x + b + (alpha/r)·Σ_i (a_i · x) b_i with the factors the layer used (LoRA: all r; MixLoRA: the selected
    ``last_selection``, whose choice tests/test_routing_numerics.py checks against float64 routing).

    ``absolute=True`` evaluates the same expressions on |W|, |b|, |x|, |A|, |B|, |g|: the sums of magnitudes
    Σ|terms| that the γ_n error bounds multiply, for the output and for each gradient (the gradient of a
    polynomial with non-negative coefficients, evaluated on absolute values, bounds every partial sum in it)."""
    f = (lambda t: t.detach().double().abs()) if absolute else (lambda t: t.detach().double())
    w, bias, xs, gs = f(layer.base.weight), f(layer.base.bias), f(x), f(g)
    a = f(layer.lora_a).requires_grad_()
    b = f(layer.lora_b).requires_grad_()
    if isinstance(layer, MixLoRALinear):
        idx_a, idx_b = layer.last_selection
        a_sel, b_sel = a[idx_a], b[idx_b]  # [B, r, d_in], [B, r, d_out]
        update = torch.einsum("btd,brd,bro->bto", xs, a_sel, b_sel)
    else:
        update = torch.einsum("btd,rd,ro->bto", xs, a, b)
    y = xs @ w.T + bias + layer.scaling * update
    (y * gs).sum().backward()
    return y.detach(), a.grad, b.grad


@pytest.mark.parametrize("kind", ["lora", "mixlora"])
def test_adapter_layers_under_bf16_autocast_with_fp32_weights(kind):
    """fp32 layer weights, bf16 autocast (what PlainBackend does): the forward runs (LoRALinear once failed in its
    in-place add, bf16 base output += fp32 factors), returns bf16, and gives fp32 gradients to the fp32 factors;
    output and gradients agree with float64 within γ_8 · Σ|terms|, elementwise.

    Rounding model, that of PyTorch's CPU bf16 kernels: a matmul under autocast rounds its operands to bf16,
    multiplies and accumulates in fp32 and rounds the result once; an in-place addmm_/baddbmm_ into the bf16 output
    may round the product before adding (counted as one more rounding). Longest chains: output, via the adapter:
    x and a_i rounded, x·a_i rounded, b_i rounded, the product rounded, the sum rounded = 6 (alpha/r = 2
    multiplies exactly); ∂/∂b_i: g rounded (the bf16 output's gradient), x·a_i with its 3, the result rounded = 5;
    ∂/∂a_i: g and b_i rounded, g·b_i rounded, x rounded, the result rounded = 5. The fp32 sums add at most
    (n terms)·2⁻²⁴ relative (n ≤ 8 here; MixLoRA's scatter into the pool rows is such a sum), ≪ u, so γ_8 leaves two
    roundings to spare. Measured: ≤ 1.4 u. Still a 10 % error in the adapter term fails."""
    d_in, d_out, rank, batch, seq = 8, 6, 2, 2, 3
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out)
    if kind == "lora":
        layer = LoRALinear(base, rank=rank, alpha=2.0 * rank)
    else:
        layer = MixLoRALinear(base, num_factors=4, rank=rank, alpha=2.0 * rank, routing_tokens="all")
    nn.init.normal_(layer.lora_b)  # non-zero B: the adapter path is as large as the base output
    x = torch.randn(batch, seq, d_in)
    g = torch.randn(batch, seq, d_out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    (y.float() * g).sum().backward()
    assert layer.lora_a.grad.dtype == layer.lora_b.grad.dtype == torch.float32
    assert layer.base.weight.grad is None  # frozen

    ref_y, ref_ga, ref_gb = _reference(layer, x, g, absolute=False)
    mag_y, mag_ga, mag_gb = _reference(layer, x, g, absolute=True)
    out_bound = gamma(8) * mag_y
    assert ((y.double() - ref_y).abs() <= out_bound).all()
    assert ((layer.lora_a.grad.double() - ref_ga).abs() <= gamma(8) * mag_ga).all()
    assert ((layer.lora_b.grad.double() - ref_gb).abs() <= gamma(8) * mag_gb).all()
    # The adapter path is visible at this tolerance: the base output alone misses the reference.
    base_only = (x.double() @ layer.base.weight.double().T + layer.base.bias.double())
    assert ((base_only - ref_y).abs() > out_bound).any()


# ---------------------------------------------------------------------------------------------- plain loop
def plain_runs(suite: Path, root: Path, adapter: str, steps: int, cut: int) -> dict[str, Path]:
    """fp32 and bf16 runs of ``steps`` steps, and a bf16 run stopped at ``cut`` then resumed to ``steps``.

    Micro batch 2, accumulation 2; dropout 0.1 makes the restored RNG state matter; a checkpoint every 2 steps."""
    common = (f"adapter={adapter}", "adapter.dropout=0.1", "trainer.micro_batch_size=2", "trainer.global_batch_size=4",
              "trainer.save_every=2", "trainer.log_every=1", "trainer.keep_checkpoints=null")
    out = {"fp32": root / "fp32", "bf16": root / "bf16", "resumed": root / "resumed"}
    run(compose_config(small(suite, out["fp32"], *common, "trainer.precision=fp32", f"trainer.max_steps={steps}")))
    bf16 = (*common, "trainer.precision=bf16")
    summary = run(compose_config(small(suite, out["bf16"], *bf16, f"trainer.max_steps={steps}")))
    assert (summary["precision"], summary["device"], summary["strategy"]) == ("bf16", "cpu", "single")
    run(compose_config(small(suite, out["resumed"], *bf16, f"trainer.max_steps={cut}")))
    resumed = run(compose_config(small(suite, out["resumed"], *bf16, f"trainer.max_steps={steps}", "resume=true")))
    assert resumed["steps_this_run"] == steps - cut
    return out


@pytest.fixture(scope="module")
def mixlora_runs(suite, tmp_path_factory):
    return plain_runs(suite, tmp_path_factory.mktemp("plain"), "mixlora", steps=3, cut=1)


def check_plain_runs(out: dict[str, Path], steps: int) -> None:
    assert_same_run(out["bf16"], out["resumed"])
    assert_losses_close(out["bf16"], out["fp32"], steps)
    assert_weights_within_adam_bound(out["bf16"], out["fp32"], stored_in_bf16=False)
    assert_trained_like_fp32(out["bf16"], out["fp32"])
    # fp32 master weights: a bf16 master copy would leave every element representable in bf16 (an fp32 value
    # drawn at random is so with probability 2^-16).
    projector = load_file(str(out["bf16"] / "projector.safetensors"))
    w = torch.cat([t.flatten() for t in projector.values()])
    assert float((w != w.bfloat16().float()).float().mean()) > 0.9
    check = [json.loads((out[k] / "summary.json").read_text())["check_loss"] for k in ("bf16", "fp32")]
    assert abs(check[0] - check[1]) <= U * check[1]  # eval-mode loss after training: the same budget


def test_bf16_plain_run_resumes_exactly_and_follows_fp32(mixlora_runs):
    """trainer.precision=bf16 on the CPU (autocast, fp32 masters), MixLoRA: 3 steps; stopped at 1 and resumed
    (through the step-2 checkpoint) it gives the uninterrupted run's weights and losses bit for bit; losses within
    u·L of fp32 (module docstring)."""
    check_plain_runs(mixlora_runs, steps=3)


@pytest.mark.slow
def test_bf16_plain_lora_run_resumes_exactly_and_follows_fp32(suite, tmp_path):
    """The same for LoRA over 6 steps (stopped at 4), ~60-110 s depending on machine load."""
    check_plain_runs(plain_runs(suite, tmp_path, "lora", steps=6, cut=4), steps=6)


def test_bf16_preflight_on_cpu(suite, tmp_path):
    plan = preflight(compose_config(small(suite, tmp_path / "run", "trainer.precision=bf16")))
    assert (plan.precision, plan.device_kind) == ("bf16", "cpu")
    plan = preflight(compose_config(small(suite, tmp_path / "run", "trainer=zero3", "trainer.precision=bf16")))
    assert plan.ds_config["bf16"] == {"enabled": True} and plan.device_kind == "cpu"
    assert preflight(compose_config(small(suite, tmp_path / "run"))).precision == (
        "bf16" if torch.cuda.is_available() else "fp32")  # auto: fp32 on the CPU


# ---------------------------------------------------------------------------------------------- eval.py
def test_eval_py_bfloat16_on_a_bf16_trained_run(mixlora_runs, suite, tmp_path):
    """eval.py dtype=bfloat16 on the bf16-trained run: the model is cast to bf16 and its answers are those of a
    plain greedy ``model.generate`` of the bf16-loaded run on the literal prompt (batch 1, so the same shapes)."""
    from PIL import Image

    from mixlora.build import load_run
    from mixlora.tasks import textvqa
    from eval_setup import SHORT, VICUNA_SYSTEM, compose_eval, load_eval_script

    run_dir, out = mixlora_runs["bf16"], tmp_path / "eval_out"
    cfg = compose_eval([f"run={run_dir}", f"data_root={suite}", "tasks=[textvqa]", "limit=2", "batch_size=1",
                        "decoding.max_new_tokens=3", "progress=false", "dtype=bfloat16", f"output_dir={out}"])
    summary = load_eval_script().run_eval(cfg)
    assert summary["source"]["adapter"].startswith("mixlora")
    written = [json.loads(x) for x in (out / "eval/textvqa/predictions.jsonl").read_text().splitlines()]
    assert len(written) == 2

    stack, _ = load_run(run_dir, dtype=torch.bfloat16)
    model, tok = stack.model, stack.tokenizer
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    image_id = tok.convert_tokens_to_ids("<image>")
    examples = textvqa.TextVQATask(str(suite / "eval/textvqa/test.jsonl")).examples(limit=2)
    for ex, record in zip(examples, written):
        literal = f"{VICUNA_SYSTEM} USER: <image>\n{ex.record['prompt']}\n{SHORT} ASSISTANT:"
        ids = [tok.bos_token_id] + tok(literal, add_special_tokens=False)["input_ids"]
        k = ids.index(image_id)
        ids = torch.tensor([ids[:k] + [image_id] * model.num_image_tokens + ids[k + 1:]])
        pixels = stack.image_processor(Image.open(ex.image)).unsqueeze(0)
        with torch.no_grad():
            new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                 routing_mask=torch.ones_like(ids, dtype=torch.bool), max_new_tokens=3,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        assert record["uid"] == ex.uid and record["prediction"] == tok.decode(new[0], skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------- DeepSpeed
def deepspeed_runs(suite: Path, root: Path, stages: tuple[str, ...], steps: int, cut: int) -> list[list[str]]:
    """Override lists: per ZeRO stage a bf16 run of ``steps`` steps, and one stopped at ``cut`` then resumed."""
    runs = []
    for stage in stages:
        common = (f"trainer={stage}", "trainer.precision=bf16", "adapter.dropout=0", "trainer.save_every=2",
                  "trainer.log_every=1")
        runs += [small(suite, root / stage, *common, f"trainer.max_steps={steps}"),
                 small(suite, root / f"{stage}_resumed", *common, f"trainer.max_steps={cut}"),
                 small(suite, root / f"{stage}_resumed", *common, f"trainer.max_steps={steps}", "resume=true")]
    return runs


def check_deepspeed_runs(root: Path, fp32: Path, stages: tuple[str, ...], steps: int, world: int) -> None:
    for stage in stages:
        full, resumed = root / stage, root / f"{stage}_resumed"
        assert_same_run(full, resumed)
        assert_losses_close(full, fp32, steps)
        assert_weights_within_adam_bound(full, fp32, stored_in_bf16=True)
        assert_trained_like_fp32(full, fp32)
        summary = json.loads((full / "summary.json").read_text())
        assert (summary["precision"], summary["world_size"]) == ("bf16", world)
        state = full / f"checkpoints/step-{steps:06d}/deepspeed/state"
        # DeepSpeed's bf16 optimiser wrote the fp32 master partitions (one file per rank)
        assert len(list(state.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"))) == world, stage


def fp32_reference(suite: Path, out: Path, steps: int) -> Path:
    """The plain fp32 run of the same samples per step (micro 4 x accumulation 2 = 2 ranks x micro 4)."""
    run(compose_config(small(suite, out, "adapter.dropout=0", "trainer.save_every=2", "trainer.log_every=1",
                             "trainer.precision=fp32", f"trainer.max_steps={steps}")))
    return out


@pytest.mark.slow
def test_deepspeed_bf16_single_process_zero2_zero3_resume_exactly_and_follow_fp32(suite, tmp_path):
    """One DeepSpeed process, bf16 (DeepSpeed's bf16 module, fp32 master partitions): ZeRO-2 and ZeRO-3, 4 steps;
    stopped at 2 and resumed gives the uninterrupted weights and losses bit for bit; losses within u·L of the
    plain fp32 run; weights within Adam's step bound plus one bf16 rounding. ~55 s."""
    stages = ("zero2", "zero3")
    fp32 = fp32_reference(suite, tmp_path / "fp32", steps=4)
    run_in_subprocess(deepspeed_runs(suite, tmp_path, stages, steps=4, cut=2))
    check_deepspeed_runs(tmp_path, fp32, stages, steps=4, world=1)


@pytest.mark.slow
def test_deepspeed_bf16_two_process_zero2_zero3_resume_exactly_and_follow_fp32(suite, tmp_path):
    """torchrun, 2 ranks (gloo), bf16, ZeRO-2 and ZeRO-3 (all six runs in one launch, one process group): as the
    single-process test. 2 ranks x micro 4 see the samples of one process's micro 4 x accumulation 2. ~75 s."""
    stages = ("zero2", "zero3")
    fp32 = fp32_reference(suite, tmp_path / "fp32", steps=4)
    script = tmp_path / "runs.py"
    script.write_text(RUNS_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), json.dumps(deepspeed_runs(suite, tmp_path, stages, steps=4, cut=2))],
                          env=ds_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    check_deepspeed_runs(tmp_path, fp32, stages, steps=4, world=2)
    assert sorted(p.name for p in (tmp_path / "zero3_resumed/checkpoints/step-000004/rng").iterdir()) == \
        ["rank0.pt", "rank1.pt"]
