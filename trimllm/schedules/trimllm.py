"""TrimLLM, as in the paper (Hu et al., 2024): one module per stage, chosen by the calibration scan
(``task_accuracy``) over attention and MLP halves. Attention is dropped only if its best candidate is strictly
better than the best MLP candidate; the scan's tie-breaker is the activation norm."""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, ScheduleFacts, StageContext


@SCHEDULES.register(facts=ScheduleFacts(granularity="sublayer", scorer="task_accuracy"))  # the paper's scan of halves
def trimllm(ctx: StageContext) -> Decision:
    if ctx.stage == 0:
        return Decision()
    if ctx.budget <= 0:
        return Decision(last=True)
    facts = SCHEDULES.facts("trimllm")
    scores = ctx.score(facts.granularity, scorer=facts.scorer)
    ranked = scores.ranked()
    best_attn = next(((c, s) for c, s in ranked if c.startswith("attn.")), None)
    best_mlp = next(((c, s) for c, s in ranked if c.startswith("mlp.")), None)
    if best_mlp is None or (best_attn is not None and best_attn[1] < best_mlp[1]):
        choice = best_attn
    else:
        choice = best_mlp
    return Decision(drop=[choice[0]], scores=scores)

