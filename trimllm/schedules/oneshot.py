"""One-shot pruning (ShortGPT, Men et al., 2024; Gromov et al., 2024): score once, remove everything up to the
target at stage 0, then train the pruned model once. The baseline that progressive dropping must beat."""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, ScheduleFacts, StageContext


@SCHEDULES.register(facts=ScheduleFacts(full_depth_stage0=False, stages=1, needs_target_fraction=True))
def oneshot(ctx: StageContext) -> Decision:
    scores = ctx.score(ctx.recipe.scoring.granularity)
    return Decision(drop=[c for c, _ in scores.ranked()[: ctx.budget]], scores=scores, last=True)
