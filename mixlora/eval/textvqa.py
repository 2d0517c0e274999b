"""Alias of ``mixlora.scoring.textvqa`` (the scorers' former location); import that module in new code."""

from mixlora.scoring import textvqa as _target
from mixlora.scoring.textvqa import *  # noqa: F401,F403


def __getattr__(name: str):
    # Names ``import *`` skips (private helpers) still resolve to the real module's objects.
    return getattr(_target, name)
