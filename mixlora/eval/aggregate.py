"""Alias of ``mixlora.scoring.aggregate`` (the scorers' former location); import that module in new code."""

from mixlora.scoring import aggregate as _target
from mixlora.scoring.aggregate import *  # noqa: F401,F403


def __getattr__(name: str):
    # Names ``import *`` skips (private helpers) still resolve to the real module's objects.
    return getattr(_target, name)
