#!/usr/bin/env python
"""Routing analysis of MixLoRA (paper §5.6): factor usage per task and layer, and the t-SNE of selections with
Jaccard distance, held-out sets next to their nearest training tasks.

    python scripts/routing_analysis.py --run runs/mixlora_e8_r4 --out results/routing/mixlora_e8_r4
    python scripts/routing_analysis.py --model tiny --adapter mixlora --num-factors 8 --rank 4 --n 16 --out /tmp/routing

Instances: n prompts per training task (from --data) and per held-out set (from the synthetic suite beside it,
its manifest.json naming each set's closest training tasks), all rendered with the evaluation template and routed
on their prompt. Writes OUT/usage.json, OUT/usage_layer{L}.png, OUT/usage_entropy.png, OUT/tsne_layer{L}.png and
.json, OUT/nearest.json and OUT/nearest.txt (also printed). Definitions: docs/analysis.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mixlora.analysis import (REPO_ROOT, add_model_arguments, adapted_layers, default_image_folder,
                              ensure_synthetic_suite, heldout_prompts, load_manifest, load_records, parse_list,
                              resolve_layers, sample_per_task, stack_from_args)
from mixlora.analysis.routing import LINKAGES, SELECTION_PARTS

# The paper's seen <-> unseen pairs were ExDark-CIFAR-10, GQA-VSR, Image-Text-SNLI-VE, InfographicVQA-Text-VQA and
# VQA-Object-Presence-POPE; these are the synthetic suite's versions of the same held-out sets.
DEFAULT_HELDOUT = ("cifar10", "vsr", "snli_ve", "textvqa", "pope")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, adapters=("mixlora",))
    d = p.add_argument_group("data")
    d.add_argument("--data", default=str(REPO_ROOT / "data/synthetic/train.json"), help="Vision-Flan-style JSON list")
    d.add_argument("--image-folder", default=None, help="folder of the records' image paths (default: the synthetic "
                                                        "manifest's image_root, else the JSON's folder)")
    d.add_argument("--suite", default=None, help="synthetic suite folder with manifest.json (default: --data's folder)")
    d.add_argument("--heldout", default=",".join(DEFAULT_HELDOUT),
                   help="held-out sets: cifar10, cifar100, mnist, vsr, snli_ve, textvqa, pope[/split], "
                        "cvbench/<task>, mme/<subtask>")
    d.add_argument("--tasks", default=None, help="training tasks (default: every training task the manifest lists as "
                                                 "closest to one of the held-out sets)")
    d.add_argument("--n", type=int, default=16, help="prompts per task and per held-out set")
    d.add_argument("--seed", type=int, default=0, help="sampling and t-SNE seed")
    d.add_argument("--template", default="llava_v1", help="prompt template (released evaluation: llava_v1)")
    a = p.add_argument_group("analysis")
    a.add_argument("--layers", default=None, help="decoder layers (default: first, middle and last adapted layer; "
                                                  "negative = counted from the last)")
    a.add_argument("--parts", choices=list(SELECTION_PARTS), default="ab",
                   help="selection set: ab = A and B selections together (tagged), a or b = one pool")
    a.add_argument("--linkage", choices=list(LINKAGES), default="centroid",
                   help="nearest training task by distance to its mean selection set (centroid) or by mean pairwise "
                        "distance (average)")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--perplexity", type=float, default=None, help="t-SNE perplexity (default min(30, (N-1)/3))")
    a.add_argument("--no-tsne", action="store_true", help="skip the t-SNE (no scikit-learn needed)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from mixlora.analysis.routing import (analyse_routing, nearest_table, sample_prompts, training_prompts,
                                          write_routing_outputs)

    data = ensure_synthetic_suite(args.data)
    suite = Path(args.suite) if args.suite else data.parent
    manifest = load_manifest(suite)
    heldout = parse_list(args.heldout) or []
    heldout_rows, closest = {}, {}
    for name in heldout:
        rows, closest[name] = heldout_prompts(suite, name, manifest)
        heldout_rows[name] = sample_prompts(rows, args.n, args.seed, name)
    records = load_records(data)
    tasks = parse_list(args.tasks) or list(dict.fromkeys(t for name in heldout for t in closest[name]))
    clash = sorted(set(tasks) & set(heldout))
    if clash:
        raise SystemExit(f"{clash} are given both as training tasks and held-out sets")
    picked = sample_per_task(records, tasks, args.n, args.seed, source=str(data))
    folder = Path(args.image_folder) if args.image_folder else default_image_folder(data)
    prompts = {t: training_prompts(records, picked[t], folder, source=str(data)) for t in tasks}
    prompts.update(heldout_rows)

    stack = stack_from_args(args, [data])
    layers = resolve_layers(args.layers, adapted_layers(stack.model.llm))
    report = analyse_routing(stack, prompts, heldout, closest, layers, parts=args.parts, linkage=args.linkage,
                             template=args.template, batch_size=args.batch_size, seed=args.seed,
                             perplexity=args.perplexity, tsne=not args.no_tsne, progress=not args.no_progress)
    config = getattr(stack.model.llm, "mixlora_adapter_config", None)
    report.info.update({"data": str(data), "suite": str(suite), "n": args.n, "run": args.run, "model": args.model,
                        "adapter": config.to_dict() if config is not None else None, "samples": picked,
                        "command": "python scripts/routing_analysis.py "
                                   + " ".join(sys.argv[1:] if argv is None else argv)})
    out = Path(args.out)
    paths = write_routing_outputs(report, out)
    table = nearest_table(report.nearest)
    (out / "nearest.txt").write_text(table + "\n")
    print(table)
    print(f"wrote {len(paths) + 1} files to {out}")
    return {"usage": report.usage_json(), "nearest": report.nearest_json(), "files": [str(p) for p in paths]}


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, ImportError) as err:  # bad inputs: one message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
