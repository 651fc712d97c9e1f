"""Progressive freezing (Progtuning): bottom-up, a growing share of the blocks,
round(r x kept x (s + 1) / (s + 2)) blocks at stage s, chosen anew each stage."""

from __future__ import annotations

from trimllm.freezing import FREEZING, FreezeContext


@FREEZING.register()
def progtuning(ctx: FreezeContext) -> list[int]:
    kept = ctx.plan.kept
    return kept[: int(round(ctx.fraction * len(kept) * (ctx.stage + 1) / (ctx.stage + 2)))]


progtuning.anew = True
