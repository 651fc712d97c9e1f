"""Freezing modes: which blocks train frozen at each stage (``freeze.mode``, share ``freeze.fraction``). One file
each in this folder, registered under its file name.

A mode is a function ``(ctx: FreezeContext) -> list[int]``: the blocks (original indices) to freeze this stage. A
mode whose ``anew`` attribute is true chooses the whole frozen set at every stage (the previous stage's is
released first); the others add to what is already frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trimllm.plan import Plan
from trimllm.registry import Registry

FREEZING: Registry = Registry("freezing mode", fixed=1)  # (ctx)


@dataclass(frozen=True)
class FreezeContext:
    """What a freezing mode may look at."""

    stage: int
    plan: Plan  # the model's structure after this stage's removals
    count: int  # round(freeze.fraction x blocks kept)
    fraction: float
    score: Callable  # score(granularity) -> ScoreResult, bound to the recipe's scorer and options


def blocks_to_freeze(mode: str, ctx: FreezeContext) -> list[int]:
    """The blocks mode ``mode`` freezes this stage (none when the fraction rounds to zero blocks)."""
    return FREEZING.get(mode)(ctx) if ctx.count else []


def chooses_anew(mode: str) -> bool:
    return getattr(FREEZING.get(mode), "anew", False)


FREEZING.discover(__name__)

__all__ = ["FREEZING", "FreezeContext", "blocks_to_freeze", "chooses_anew"]
