"""Progressive dropping (v0.1's default): after a full-depth stage 0, each stage removes the ``per_stage`` least
important remaining candidates by the recipe's scorer (optionally proxy pre-selected), then trains; in the spirit of
TrimLLM's progressive specialization, with any scorer and granularity.

``order``: ``rescore`` scores the pruned, retrained model anew at every stage; ``fixed`` scores once, on the stage-0
fine-tuned model, and removes in that order (the default). Lu et al. 2024 ("Reassessing Layer Pruning in LLMs",
Table 5) found re-scored iterative pruning unstable (it fell far below one-shot) while a fixed order stayed close to
it; so did study v2 (BENCHMARKS.md): at 50 % removed on SciQ, re-scored 0.405, fixed 0.682. ``rescore`` was v0.1's
behaviour.
"""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, ScheduleFacts, StageContext
from trimllm.scoring import ScoreResult, list_candidates


def _checks(options: dict) -> list[str]:
    per_stage, order = options["per_stage"], options["order"]
    problems = []
    if not isinstance(per_stage, int) or isinstance(per_stage, bool) or per_stage < 1:
        problems.append(f"per_stage = {per_stage!r} must be an integer >= 1 (modules removed per stage)")
    if order not in ("fixed", "rescore"):
        problems.append(f"order = {order!r} must be fixed (score once, after stage 0) or rescore (every stage)")
    return problems


@SCHEDULES.register(facts=ScheduleFacts(), checks=_checks)
def progressive(ctx: StageContext, per_stage: int = 1, order: str = "fixed") -> Decision:
    if ctx.stage == 0:
        return Decision()
    if ctx.budget <= 0:
        return Decision(last=True)
    granularity = ctx.recipe.scoring.granularity
    if order == "fixed" and ctx.first_scores is not None:
        present = set(list_candidates(ctx.model, granularity))
        first = ctx.first_scores
        scores = ScoreResult(first.scorer, {c: s for c, s in first.scores.items() if c in present}, {"order": "fixed"})
    else:
        scores = ctx.score(granularity)
    count = min(per_stage, ctx.budget)
    # `last`: this removal reaches the target, so the stage it starts is the final (recovery) stage
    return Decision(drop=[c for c, _ in scores.ranked()[:count]], scores=scores, last=count >= ctx.budget)
