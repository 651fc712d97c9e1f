"""Static freezing (TrimLLM, Hu et al. 2024): at stage 0, the share of blocks whose removal hurts least by the
recipe's scorer, frozen for the whole run (a block removed later leaves the set)."""

from __future__ import annotations

from trimllm.freezing import FREEZING, FreezeContext
from trimllm.freezing.contribution import contribution


@FREEZING.register()
def static(ctx: FreezeContext) -> list[int]:
    return contribution(ctx) if ctx.stage == 0 else []  # later stages: the structural plan keeps them frozen
