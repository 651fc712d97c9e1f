"""Progressive dropping (trimllm's default): after a full-depth stage 0, each stage re-scores the remaining
candidates with the recipe's scorer (optionally proxy pre-selected) and removes the ``per_stage`` least
important, then trains; in the spirit of TrimLLM's progressive specialization, with any scorer and granularity."""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, StageContext


@SCHEDULES.register()
def progressive(ctx: StageContext, per_stage: int = 1) -> Decision:
    if ctx.stage == 0:
        return Decision()
    if ctx.budget <= 0:
        return Decision(last=True)
    scores = ctx.score(ctx.recipe.scoring.granularity)
    count = min(per_stage, ctx.budget)
    # `last`: this removal reaches the target, so the stage it starts is the final (recovery) stage
    return Decision(drop=[c for c, _ in scores.ranked()[:count]], scores=scores, last=count >= ctx.budget)
