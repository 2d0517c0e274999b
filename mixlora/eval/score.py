"""Alias of ``mixlora.scoring.score``: ``python -m mixlora.eval.score ...`` runs the same command line."""

import sys

from mixlora.scoring import score as _target
from mixlora.scoring.score import *  # noqa: F401,F403
from mixlora.scoring.score import build_parser, main  # noqa: F401


def __getattr__(name: str):
    # Names ``import *`` skips (private helpers) still resolve to the real module's objects.
    return getattr(_target, name)


if __name__ == "__main__":
    sys.exit(main())
