#!/usr/bin/env python
"""Task-interference matrices (docs/method.md#task-interference) between training tasks, for LoRA A and LoRA B, with heatmaps.

    # a trained run (LoRA or MixLoRA), the paper's two panels (MLP, self-attention) at two layers
    python scripts/interference.py --run runs/lora_r4 --data data/synthetic/train.json --layers 0,-1 --n 8 \
        --out results/interference/lora_r4
    # a fresh tiny model (B drawn from N(0, 0.02²) so that A has gradients), three tasks
    python scripts/interference.py --model tiny --adapter mixlora --num-factors 8 --rank 4 \
        --tasks SynthShapes+color_name,SynthCount+count_digits,SynthGlyphs+word_transcription --layers 0,1 --n 8 \
        --out /tmp/interference

Writes OUT/interference.json (matrices per layer x {mlp, attn} x {A, B}, the sampled records, the settings) and
OUT/interference_{mlp,attn}.png. If --data is the synthetic suite's train.json and the suite is missing, it is
generated first. Formula and options: docs/analysis.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mixlora.analysis import (add_model_arguments, ensure_synthetic_suite, parse_list, randomize_lora_b,
                              stack_from_args)
from mixlora.analysis.interference import MODULE_TYPES, PARTS, SELF_PAIRS

# The checkout this script lives in: its default data paths (data/synthetic/...) are relative to it.
ROOT = Path(__file__).resolve().parents[1]

# Synthetic stand-ins for the paper's six tasks (ScienceQA reasoning, COCO coarse perception, FairFace fine-grained
# perception, iNaturalist classification, ST-VQA OCR, PACS domain classification).
DEFAULT_TASKS = ("SynthGlyphs+arithmetic", "SynthCaptions+image_captioning", "SynthShapes+color_classification",
                 "SynthShapes+shape_classification", "SynthGlyphs+word_transcription",
                 "SynthScenes+background_classification")
FRESH_B_STD = 0.02


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    d = p.add_argument_group("data")
    d.add_argument("--data", default=str(ROOT / "data/synthetic/train.json"), help="Vision-Flan-style JSON list")
    d.add_argument("--image-folder", default=None, help="folder of the records' image paths (default: the synthetic "
                                                        "manifest's image_root, else the JSON's folder)")
    d.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated task_name values (rows/columns)")
    d.add_argument("--n", type=int, default=8, help="records sampled per task")
    d.add_argument("--seed", type=int, default=0, help="sampling seed (and the seed of --b-init-std)")
    d.add_argument("--template", default="vicuna_v1", help="conversation template (training: vicuna_v1)")
    d.add_argument("--max-length", type=int, default=2048, help="maximum sequence length, image tokens included")
    m = p.add_argument_group("measurement")
    m.add_argument("--layers", default="0,-1", help="decoder layers; negative = counted from the last adapted layer")
    m.add_argument("--module-types", default="mlp,attn", help=f"subset of {list(MODULE_TYPES)}")
    m.add_argument("--parts", default="A,B", help=f"subset of {list(PARTS)}")
    m.add_argument("--micro-batch", type=int, default=1, help="samples per gradient (1 = per-sample gradients)")
    m.add_argument("--self-pairs", choices=list(SELF_PAIRS), default="include",
                   help="include: the own-task term averages over all of the task's samples (formula as written); "
                        "exclude: leaves the sample itself out")
    m.add_argument("--b-init-std", type=float, default=None,
                   help=f"draw every adapter's B from N(0, std²) first; default {FRESH_B_STD} for a fresh --model "
                        "(B = 0 would give A no gradient) and untouched for --run; 0 = keep B as it is")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from mixlora.analysis.interference import interference_on_records, plot_interference

    data = ensure_synthetic_suite(args.data)
    stack = stack_from_args(args, [data])
    std = args.b_init_std if args.b_init_std is not None else (FRESH_B_STD if args.model else 0.0)
    if std < 0:
        raise SystemExit(f"--b-init-std must be >= 0, got {std}")
    if std > 0:
        count = randomize_lora_b(stack.model.llm, std, seed=args.seed)
        print(f"B of {count} adapter modules drawn from N(0, {std}^2) (--b-init-std)")
    report = interference_on_records(
        stack, data, parse_list(args.tasks), args.layers, n=args.n, seed=args.seed, micro_batch=args.micro_batch,
        image_folder=args.image_folder, template=args.template, max_length=args.max_length,
        module_types=parse_list(args.module_types), parts=parse_list(args.parts), self_pairs=args.self_pairs,
        progress=not args.no_progress)
    words = sys.argv[1:] if argv is None else argv
    report.info.update({"run": args.run, "model": args.model, "b_init_std": std,
                        "command": "python scripts/interference.py " + " ".join(words)})
    result = report.to_json()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "interference.json").write_text(json.dumps(result, indent=1))
    paths = plot_interference(result, out)
    for (layer, kind, part), mat in report.matrices.items():
        off = [v for i, row in enumerate(mat.values) for j, v in enumerate(row) if i != j]
        print(f"layer {layer:>2} {kind:<4} {part}: min {min(off):+.3f}  mean {sum(off) / len(off):+.3f}  "
              f"negative cells {sum(v < 0 for v in off)}/{len(off)}" if off else f"layer {layer} {kind} {part}: 1 task")
    print(f"wrote {out / 'interference.json'} and {', '.join(p.name for p in paths)}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, ImportError) as err:  # bad inputs: one message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
