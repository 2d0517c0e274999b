#!/usr/bin/env python
"""Generate the synthetic task suite: Vision-Flan-style training tasks, a stage-one caption set and zero-shot
held-out sets in the public formats of MME, CV-Bench, POPE and the MixLoRA evaluation JSONL.

    python data/make_synthetic.py --out data/synthetic --seed 0
    python data/make_synthetic.py --out data/synthetic --only-definitions   # add task_definitions.json to an
                                                                            # older suite

Same arguments -> byte-identical files. Formats and design: docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import sys

from mixlora.data.synthetic import generate_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Output and randomness
    parser.add_argument("--out", required=True, help="output folder (empty or absent; data/synthetic is git-ignored)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random stream (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the suite's own outputs (train.json, stage1.json, task_definitions.json, "
                             "manifest.json, images/, eval/) "
                             "in a non-empty --out; other files there are kept")
    # Sizes
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels, 48-512 (default 64)")
    parser.add_argument("--per-task", type=int, default=150, help="training records per training task (default 150)")
    parser.add_argument("--eval-per-task", type=int, default=150,
                        help="records per held-out set, per CV-Bench task and per POPE split (default 150)")
    parser.add_argument("--mme-images", type=int, default=30, help="images per MME subtask, 2 questions each (default 30)")
    parser.add_argument("--stage1-size", type=int, default=2000, help="stage-one caption records (default 2000)")
    parser.add_argument("--seen-per-task", type=int, default=30,
                        help="held-out instances per training task in eval/seen (default 30)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--only-definitions", action="store_true",
                        help="only (re)write task_definitions.json into an existing suite at --out (for suites "
                             "generated before it existed; the definitions depend on no seed or size)")
    args = parser.parse_args(argv)
    if args.only_definitions:
        from pathlib import Path

        from mixlora.data.synthetic import write_task_definitions

        if not (Path(args.out) / "train.json").is_file():
            parser.error(f"--only-definitions: {args.out} holds no train.json; generate the suite first")
        entry = write_task_definitions(args.out)
        print(f"wrote {Path(args.out) / entry['path']}: {entry['training_tasks']} training tasks, "
              f"{entry['eval_keys']} held-out keys", file=sys.stderr)
        return 0
    try:
        manifest = generate_suite(args.out, seed=args.seed, image_size=args.image_size, per_task=args.per_task,
                                  eval_per_task=args.eval_per_task, mme_images=args.mme_images,
                                  stage1_size=args.stage1_size, seen_per_task=args.seen_per_task,
                                  overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))  # exits with status 2 and the message
    train = manifest["train"]
    print(f"wrote {args.out}: {train['records']} training records in {len(train['tasks'])} tasks, "
          f"{manifest['stage1']['records']} stage-1 captions, held-out sets: {', '.join(manifest['eval'])}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
