"""Contribution freezing: at every stage, the share of the remaining blocks with the lowest contribution by the
recipe's scorer, chosen anew."""

from __future__ import annotations

from trimllm.freezing import FREEZING, FreezeContext
from trimllm.scoring.candidates import parse


@FREEZING.register()
def contribution(ctx: FreezeContext) -> list[int]:
    return sorted(parse(c)[1] for c, _ in ctx.score("block").ranked()[: ctx.count])


contribution.anew = True
