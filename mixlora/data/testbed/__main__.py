"""Command line: ``python -m mixlora.data.testbed --out DIR [options]``.

Exit status: 0 on success (also when DIR already holds the same build), 2 for a bad argument, 1 when DIR holds
a different or incomplete build and ``--overwrite`` was not given.
"""

from __future__ import annotations

import argparse
import sys

from mixlora.data.testbed.build import DEFAULTS, make_testbed
from mixlora.data.testbed.families import DEFAULT_TASKS, TASKS_BY_NAME
from mixlora.data.testbed.vocab import check_image_size


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _image_size(text: str) -> int:
    try:
        return check_image_size(int(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mixlora.data.testbed",
        description="Write the synthetic interference testbed: shared image pools, stage-1 captions, training "
                    "tasks with conflicting answer mappings, and seen/unseen-phrasing test splits.")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=_image_size, default=DEFAULTS["image_size"],
                        help="image side in pixels, even, 32-512 (default %(default)s)")
    counts = {
        "train_images": "images in the shared training pool",
        "test_images": "images in the shared test pool",
        "train_per_task": "training records per task",
        "test_per_task": "test records per task in each test split",
        "stage1_size": "stage-1 caption records",
    }
    for name, text in counts.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=_positive_int, default=DEFAULTS[name],
                            help=f"{text} (default %(default)s)")
    parser.add_argument("--tasks", type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                        default=None, help="comma-separated task names, e.g. colour_name,size_flip (default: "
                        f"{','.join(DEFAULT_TASKS)}; all: {','.join(TASKS_BY_NAME)})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different or incomplete build in --out (only the generator's own files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        manifest = make_testbed(args.out, seed=args.seed, image_size=args.image_size,
                                train_images=args.train_images, test_images=args.test_images,
                                train_per_task=args.train_per_task, test_per_task=args.test_per_task,
                                stage1_size=args.stage1_size, tasks=args.tasks, overwrite=args.overwrite,
                                progress=not args.quiet)
    except ValueError as err:
        parser.error(str(err))  # exits 2
    except (FileExistsError, NotADirectoryError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        records = manifest["records"]
        print(f"testbed in {args.out}: {records['train']} train, {records['stage1']} stage-1, "
              f"{records['seen']} seen + {records['unseen']} unseen test records ({len(manifest['tasks'])} tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
