#!/usr/bin/env python
"""Routing analysis of MixLoRA (docs/method.md#routing-analysis): factor usage per task and layer, and the t-SNE
of selections with Jaccard distance, held-out sets next to their nearest training tasks.

    python scripts/routing_analysis.py --run runs/mixlora_e8_r4 --out results/routing/mixlora_e8_r4
    python scripts/routing_analysis.py --model tiny --adapter mixlora --num-factors 8 --rank 4 --n 16 --out /tmp/routing
    python scripts/routing_analysis.py --model tiny --routing-source task --out /tmp/routing_task   # task routing

Instances: n prompts per training task (from --data) and per held-out set (from the synthetic suite beside it,
its manifest.json naming each set's closest training tasks), all rendered with the evaluation template and routed
on their prompt. Writes OUT/usage.json, OUT/usage_layer{L}.png, OUT/usage_entropy.png, OUT/tsne_layer{L}.png and
.json, OUT/nearest.json and OUT/nearest.txt (also printed). Definitions: docs/analysis.md.

Task routing (a run trained with adapter.routing_source=task, or a fresh --model with --routing-source task): every
prompt routes on its task's definition, read from --task-definitions (default: the run's data.task_definitions, as
eval.py; for a fresh model the suite's task_definitions.json). A task without a definition is an error (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mixlora.analysis import (add_model_arguments, adapted_layers, default_image_folder,
                              ensure_synthetic_suite, heldout_prompts, load_manifest, load_records, parse_list,
                              resolve_layers, sample_per_task, stack_from_args)
from mixlora.analysis.routing import LINKAGES, SELECTION_PARTS

# The checkout this script lives in: its default data paths (data/synthetic/...) are relative to it.
ROOT = Path(__file__).resolve().parents[1]

# The paper's seen <-> unseen pairs were ExDark-CIFAR-10, GQA-VSR, Image-Text-SNLI-VE, InfographicVQA-Text-VQA and
# VQA-Object-Presence-POPE; these are the synthetic suite's versions of the same held-out sets.
DEFAULT_HELDOUT = ("cifar10", "vsr", "snli_ve", "textvqa", "pope")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, adapters=("mixlora",))
    d = p.add_argument_group("data")
    d.add_argument("--data", default=str(ROOT / "data/synthetic/train.json"), help="Vision-Flan-style JSON list")
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
    a.add_argument("--routing-source", choices=["instance", "task"], default="instance",
                   help="what a fresh --model's MixLoRA routes on: each instance, or its task's definition")
    a.add_argument("--task-definitions", default=None,
                   help="task_definitions.json for a task-routed model (default: the run's data.task_definitions; "
                        "a fresh model: the suite's task_definitions.json)")
    a.add_argument("--perplexity", type=float, default=None, help="t-SNE perplexity (default min(30, (N-1)/3))")
    a.add_argument("--no-tsne", action="store_true", help="skip the t-SNE (no scikit-learn needed)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def resolve_definitions(args: argparse.Namespace, suite: Path):
    """The task definitions the model routes on, or None for instance routing: for --run, eval.py's own rule
    (``mixlora.tasks.evaluate.resolve_task_definitions``); for a fresh --model, --task-definitions or the suite's file.
    A file given for a model that does not route on definitions is an error."""
    from mixlora.data.definitions import DEFINITIONS_FILE, load_definitions
    from mixlora.tasks.evaluate import resolve_task_definitions

    if args.run:
        if args.routing_source != "instance":
            raise ValueError("--routing-source is for a fresh --model; a run routes as it was trained")
        return resolve_task_definitions(args.task_definitions, args.run)
    if args.routing_source != "task":
        if args.task_definitions is not None:
            raise ValueError("--task-definitions is set, but the fresh model routes on each instance; add "
                             "--routing-source task or drop --task-definitions")
        return None
    path = Path(args.task_definitions) if args.task_definitions else suite / DEFINITIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"task definitions {path} do not exist: pass --task-definitions PATH (a JSON object "
                                "key -> definition text; data/make_synthetic.py writes the suite's)")
    return load_definitions(path)


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

    definitions = resolve_definitions(args, suite)  # before the (slow) model load
    stack = stack_from_args(args, [data])
    layers = resolve_layers(args.layers, adapted_layers(stack.model.llm))
    report = analyse_routing(stack, prompts, heldout, closest, layers, parts=args.parts, linkage=args.linkage,
                             template=args.template, batch_size=args.batch_size, seed=args.seed,
                             perplexity=args.perplexity, tsne=not args.no_tsne, progress=not args.no_progress,
                             definitions=definitions)
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
