"""Alias of ``mixlora.scoring.cvbench`` (the scorers' former location); import that module in new code."""

from mixlora.scoring import cvbench as _target
from mixlora.scoring.cvbench import *  # noqa: F401,F403


def __getattr__(name: str):
    # Names ``import *`` skips (private helpers) still resolve to the real module's objects.
    return getattr(_target, name)
