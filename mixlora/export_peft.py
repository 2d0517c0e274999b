"""Export a LoRA run as a standard peft LoRA adapter, or as a merged Hugging Face LLM.

    python -m mixlora.export_peft RUN_DIR OUT [--merge] [--overwrite]

Adapter export (default). ``mixlora.LoRALinear`` computes ``y = W x + (alpha/r) · lora_bᵀ lora_a dropout(x)`` with
``lora_a`` [r, d_in] and ``lora_b`` [r, d_out]; peft's LoRA ``Linear`` computes
``y = W x + scaling · lora_B(lora_A(dropout(x)))`` with ``lora_A.weight`` [r, d_in], ``lora_B.weight`` [d_out, r]
and ``scaling = lora_alpha / r`` (``use_rslora=False``). So, for every adapted module at path ``P`` of the LLM
(``model.llm`` of the run's stack, e.g. ``model.layers.3.self_attn.q_proj``)::

    base_model.model.P.lora_A.weight = P.lora_a                 [r, d_in]   (same tensor)
    base_model.model.P.lora_B.weight = P.lora_bᵀ                [d_out, r]  (transposed)
    r = rank,  lora_alpha = alpha,  lora_dropout = dropout,  bias = "none",  fan_in_fan_out = false

``target_modules`` are the leaf names of the adapted linears; a layer range ``layers: [start, end)`` becomes
``layers_to_transform`` (the adapted layer indices) with ``layers_pattern`` (the container's name, ``layers``).
``base_model_name_or_path`` is the run's LLM folder (``model.builder.llm.path``), or null when the LLM is built
from a config (the tiny random stack) or starts from ``model.init_checkpoint`` (then no folder holds the base).

Merged export (``--merge``): the run is rebuilt with ``mixlora.build.load_run`` and every adapted weight becomes
``W' = W + (alpha/r) · lora_bᵀ lora_a`` ([d_out, d_in], summed in float32 or wider and rounded once to W's dtype),
the ``LoRALinear`` replaced by its base ``nn.Linear``; the plain LLM is written with ``save_pretrained`` next to the
run's tokenizer.

Either way the projector and the vision tower are not part of an LLM: the projector stays in
``RUN_DIR/projector.safetensors`` and is copied to ``OUT/projector.safetensors``; the vision tower comes from the
run's config. ``OUT/README.md`` says so. A MixLoRA run is refused: each instance selects its own r of E pool factors,
which no single low-rank update (peft LoRA or a merged weight) represents.

OUT is written into a temporary folder next to it and renamed into place; a non-empty OUT is refused unless
``overwrite``. Bad input raises :class:`ExportError` (the command line prints it and exits with status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from .build import RUN_CONFIG, RUN_MODEL, RUN_PROJECTOR, RUN_TOKENIZER
from .checkpoint import CONFIG_NAME, FORMAT, WEIGHTS_NAME

PEFT_PREFIX = "base_model.model."
# The decoder-layer container and index in a module path, as mixlora.inject.layer_index finds them.
_LAYER = re.compile(r"(?:^|\.)(layers|h|blocks)\.(\d+)(?:\.|$)")
PROG = "export_peft"


class ExportError(ValueError):
    """A run or an output folder that cannot be exported to; the message names it and the fix."""


# ------------------------------------------------------------------------------------------ reading the run
def _read_run(run_dir: Path) -> tuple[Any, dict, dict]:
    """(run config, our adapter_config.json as a dict, {key: tensor} of our adapter) for a LoRA run."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    if not run_dir.is_dir() or not (run_dir / RUN_CONFIG).is_file():
        raise ExportError(f"{run_dir} is not a run directory: {RUN_CONFIG} is missing (pass the output_dir of a "
                          "finished training run)")
    cfg = OmegaConf.load(run_dir / RUN_CONFIG)
    cfg_path = run_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise ExportError(f"{run_dir} holds no adapter ({CONFIG_NAME} is missing): an adapter=none run has no LoRA "
                          "to export; only LoRA runs (adapter=lora) can be exported")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{cfg_path} is not JSON ({err}); the run did not finish saving") from err
    if meta.get("format") != FORMAT:
        raise ExportError(f"{cfg_path} is not a {FORMAT} adapter config (format={meta.get('format')!r}); "
                          "pass a run directory written by train.py")
    if meta.get("kind") != "lora":
        raise ExportError(
            f"{run_dir} is a {meta.get('kind')!r} run, not a LoRA run: MixLoRA selects its own r of E pool factors "
            "for every instance (routing), so no single low-rank update, neither a peft LoRA adapter nor a merged "
            "weight, represents it. Only LoRA runs (adapter=lora) can be exported; evaluate MixLoRA runs with "
            "eval.py run=RUN_DIR (or mixlora.build.load_run)")
    weights = run_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise ExportError(f"adapter weights {weights} are missing (the run did not finish saving)")
    if not (run_dir / RUN_PROJECTOR).is_file():
        raise ExportError(f"{run_dir / RUN_PROJECTOR} is missing (the run did not finish saving)")
    state = load_file(str(weights))
    modules = meta.get("modules") or []
    rank = meta.get("rank")
    expected = {f"{m}.{p}" for m in modules for p in ("lora_a", "lora_b")}
    if not modules or set(state) != expected:
        odd = sorted(set(state) ^ expected)[:3]
        raise ExportError(f"{weights} does not hold exactly lora_a/lora_b of the {len(modules)} modules that "
                          f"{cfg_path} lists (e.g. {odd}); the checkpoint is damaged")
    for m in modules:
        a, b = state[f"{m}.lora_a"], state[f"{m}.lora_b"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[0] != rank:
            raise ExportError(f"{weights}: {m} has lora_a {tuple(a.shape)} and lora_b {tuple(b.shape)}, expected "
                              f"[r={rank}, d_in] and [r={rank}, d_out]; the checkpoint is damaged")
    return cfg, meta, state


def _llm_path(cfg: Any) -> Optional[str]:
    """The run's LLM checkpoint folder (``model.builder.llm.path``), or None (LLM built from a config)."""
    from omegaconf import OmegaConf

    path = OmegaConf.select(cfg, "model.builder.llm.path", default=None)
    return str(path) if path else None


def _base_weights_note(run_dir: Path, cfg: Any) -> Optional[str]:
    """Why the run's base LLM is not the folder's checkpoint (init checkpoint or full weights), or None."""
    init = cfg.model.get("init_checkpoint")
    if init:
        return f"the run's base starts from model.init_checkpoint={init}"
    if (run_dir / RUN_MODEL).is_file():
        return f"the run's base weights are {run_dir / RUN_MODEL}"
    return None


def peft_adapter(meta: dict, state: dict, base_model_name_or_path: Optional[str]) -> tuple[dict, dict]:
    """(peft ``adapter_config.json`` dict, {peft key: tensor}) for our LoRA adapter (see the module docstring)."""
    modules = sorted(meta["modules"])
    targets = sorted({m.rpartition(".")[2] for m in modules})
    layers_to_transform, layers_pattern = None, None
    if meta.get("layers") is not None:
        found = [_LAYER.search(m) for m in modules]
        if not all(found) or len({f.group(1) for f in found}) != 1:
            raise ExportError(f"the adapter's layer range {meta['layers']} selects modules whose layer index peft "
                              f"cannot express ({modules[:3]} ...)")
        indices, containers = {int(f.group(2)) for f in found}, {f.group(1) for f in found}
        layers_to_transform, layers_pattern = sorted(indices), containers.pop()
    alpha = float(meta["alpha"])
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "r": int(meta["rank"]),
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": float(meta.get("dropout", 0.0)),
        "target_modules": targets,
        "layers_to_transform": layers_to_transform,
        "layers_pattern": layers_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": None,
        "exclude_modules": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
    }
    tensors = {}
    for m in modules:
        tensors[f"{PEFT_PREFIX}{m}.lora_A.weight"] = state[f"{m}.lora_a"].contiguous()
        tensors[f"{PEFT_PREFIX}{m}.lora_B.weight"] = state[f"{m}.lora_b"].t().contiguous()
    return config, tensors


def merge_lora(llm) -> list[str]:
    """Fold every ``LoRALinear`` of ``llm`` into its base weight and put the base ``nn.Linear`` back in its place.

    ``W' = W + (alpha/r) · lora_bᵀ lora_a``, computed in float32 (float64 for a float64 layer) and rounded once to
    W's dtype. Returns the merged module names; ``llm`` then holds no adapter module.
    """
    import torch

    from .inject import adapter_modules
    from .layers import LoRALinear, routing_dtype

    merged = []
    for name, module in adapter_modules(llm).items():
        if not isinstance(module, LoRALinear):
            raise ExportError(f"{name} is a {type(module).__name__}; only LoRA adapters can be merged")
        base = module.base
        dtype = routing_dtype(base.weight.dtype)
        with torch.no_grad():
            delta = module.lora_b.to(dtype).t() @ module.lora_a.to(dtype) * module.scaling  # [d_out, d_in]
            base.weight.copy_((base.weight.to(dtype) + delta).to(base.weight.dtype))
        parent_name, _, leaf = name.rpartition(".")
        setattr(llm.get_submodule(parent_name) if parent_name else llm, leaf, base)
        merged.append(name)
    if hasattr(llm, "mixlora_adapter_config"):
        del llm.mixlora_adapter_config
    left = adapter_modules(llm)
    if left:
        raise ExportError(f"adapter modules remain after merging: {sorted(left)[:3]}")
    return merged


# ------------------------------------------------------------------------------------------ writing OUT
def _check_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"OUT {out} exists and is not a folder; choose another output folder")
    run, target = run_dir.resolve(), out.resolve()
    if target == run or target in run.parents:
        raise ExportError(f"OUT {out} is (or holds) the run directory {run_dir}; writing there would replace the "
                          "run. Choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"OUT {out} is not empty; pass --overwrite to replace it (its contents are deleted), or "
                          "choose another output folder")


def _atomic_folder(out: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a new folder next to ``out``, then rename it onto ``out`` (replacing what is there).

    The folder is made with mode 0o777 filtered by the umask, like ``mkdir``. A replaced ``out`` is first renamed
    aside, so ``out`` is at every moment either the old folder or the complete new one.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = out.parent / f".{out.name}.tmp-{tag}"
    os.mkdir(tmp, 0o777)
    try:
        write(tmp)
        if out.is_dir() and any(out.iterdir()):
            old = out.parent / f".{out.name}.old-{tag}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)  # onto an empty folder or a new name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers only; the error itself propagates
        raise


def _readme(run_dir: Path, merge: bool, base: Optional[str], notes: list[str], n_modules: int) -> str:
    if merge:
        what = (f"A merged LLM: the LoRA update (alpha/r) · B A of the run's {n_modules} adapted linears is folded into "
                "their weights (`save_pretrained` of the plain causal LM, with the run's tokenizer). Load it with "
                "`AutoModelForCausalLM.from_pretrained(OUT)`, or serve it with vLLM like any checkpoint.")
    else:
        what = (f"A peft LoRA adapter ({n_modules} modules) of the run's LLM, with the run's tokenizer. Load it with "
                "`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), OUT)`, or give OUT to vLLM "
                "as a LoRA adapter of BASE. BASE: " + (f"`{base}`." if base else "none recorded (see below)."))
    lines = [f"# Export of the run `{run_dir.name}`", "", "Written by `python -m mixlora.export_peft`.", "", what, "",
             "Not part of the LLM: the projector stays in the run's `projector.safetensors`, copied here as "
             "`projector.safetensors`; the vision tower is built from the run's `config.yaml`. The multimodal stack "
             "(`mixlora.build.load_run` on the run) needs both: this folder alone is a text-only LLM."]
    lines += ["", *[f"- {n}" for n in notes]] if notes else []
    return "\n".join(lines) + "\n"


def export_peft(run_dir: str | os.PathLike, out: str | os.PathLike, merge: bool = False,
                overwrite: bool = False) -> dict[str, Any]:
    """Write the LoRA run ``run_dir`` into ``out`` as a peft adapter (or, with ``merge``, a merged LLM).

    Returns a summary: ``out``, ``kind`` ("peft_adapter" | "merged"), ``modules``, ``base_model_name_or_path``,
    ``files`` and ``notes`` (what the user must know to load it). Raises :class:`ExportError` on bad input.
    """
    run_dir, out = Path(run_dir), Path(out)
    cfg, meta, state = _read_run(run_dir)
    _check_out(out, run_dir, overwrite)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / RUN_TOKENIZER))
    path = _llm_path(cfg)
    base_note = _base_weights_note(run_dir, cfg)
    notes = [f"The projector is not part of a peft LLM adapter: it stays in {run_dir / RUN_PROJECTOR} (copied to "
             f"{out / RUN_PROJECTOR}); the multimodal stack needs it."]
    base = None if merge or base_note else path
    if not merge:
        if base_note:
            notes.append(f"base_model_name_or_path is null: {base_note}, so the adapter applies to that LLM, not to "
                         f"{path or 'a checkpoint folder'}; use --merge for a standalone model")
        elif path is None:
            notes.append("base_model_name_or_path is null: the run's LLM is built from a config (random "
                         "initialisation, RUN_DIR/config.yaml model.builder), not a checkpoint folder; build it with "
                         "mixlora.build.build_stack, or use --merge for a standalone model")
        else:
            vocab = _checkpoint_vocab(Path(path))
            if vocab is not None and vocab < len(tokenizer):
                notes.append(f"the run's tokenizer has {len(tokenizer)} tokens and {path} {vocab} embedding rows: "
                             f"call llm.resize_token_embeddings({len(tokenizer)}) on the base before loading the "
                             "adapter (the added rows, such as <image>, were never trained)")

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        if merge:
            from .build import load_run

            stack, _ = load_run(run_dir)
            llm = stack.model.llm
            merge_lora(llm)
            llm.save_pretrained(str(tmp))
        else:
            config, tensors = peft_adapter(meta, state, base)
            save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save_pretrained(str(tmp))
        shutil.copyfile(run_dir / RUN_PROJECTOR, tmp / RUN_PROJECTOR)
        (tmp / "README.md").write_text(_readme(run_dir, merge, base, notes, len(meta["modules"])))

    _atomic_folder(out, write)
    return {"out": str(out), "kind": "merged" if merge else "peft_adapter", "modules": sorted(meta["modules"]),
            "base_model_name_or_path": base, "files": sorted(p.name for p in out.iterdir()), "notes": notes}


def _checkpoint_vocab(folder: Path) -> Optional[int]:
    """``vocab_size`` of a checkpoint folder's config.json, or None when it cannot be read there."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    value = json.loads(cfg.read_text()).get("vocab_size")
    return int(value) if isinstance(value, int) else None


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m mixlora.{PROG}", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a LoRA run directory (train.py output_dir)")
    p.add_argument("out", metavar="OUT", help="the folder to write (new or empty, or --overwrite)")
    p.add_argument("--merge", action="store_true", help="write a merged LLM (W + (alpha/r) B A) instead of an adapter")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    a = p.parse_args(argv)
    from .build import UntrustedConfigError

    try:
        summary = export_peft(a.run_dir, a.out, merge=a.merge, overwrite=a.overwrite)
    except (ExportError, UntrustedConfigError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    what = "merged LLM" if summary["kind"] == "merged" else "peft LoRA adapter"
    print(f"wrote {what} of {len(summary['modules'])} modules to {summary['out']}: {', '.join(summary['files'])}")
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
