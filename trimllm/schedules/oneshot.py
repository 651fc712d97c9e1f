"""One-shot pruning (ShortGPT, Men et al., 2024; Gromov et al., 2024): score once, remove everything up to the
target at stage 0, then train the pruned model once. The baseline that progressive dropping must beat, and, with
the pruned model's rank 64 and 3x step trained for what a full-depth fine-tune plus the pruned training would
cost, the shipped recipes' schedule: in trimllm's study v3 that beat ``tuned_oneshot`` at equal training compute
by 4.6 (SciQ) and 4.0 (Financial PhraseBank) points at 50 % removed, two seeds each (BENCHMARKS.md "Study v3")."""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, ScheduleFacts, StageContext


@SCHEDULES.register(facts=ScheduleFacts(full_depth_stage0=False, stages=1, needs_target_fraction=True))
def oneshot(ctx: StageContext) -> Decision:
    scores = ctx.score(ctx.recipe.scoring.granularity)
    return Decision(drop=[c for c, _ in scores.ranked()[: ctx.budget]], scores=scores, last=True)
