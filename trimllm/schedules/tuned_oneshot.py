"""Tune, then prune once: stage 0 fine-tunes the full-depth model on the domain; stage 1 scores that tuned model,
removes everything up to the target at once, and trains the pruned model (``train.final_stage_steps``, the
recovery, as in ShortGPT and Gromov et al. 2024).

Scoring the domain-tuned model rather than the base one is the "teacher correction" of Minitron (Sreenivas et al.
2024: fine-tune the unpruned model on the target data before pruning it), and the fixed one-shot order is what Lu
et al. 2024 ("Reassessing Layer Pruning in LLMs") found stable where re-scored iterative pruning was not. In
trimllm's study v2 (BENCHMARKS.md) it beats ``oneshot`` on the base model by 2.9 points at 50 % removed on Financial
PhraseBank (two seeds, p = 0.0002), and with a rank-64 adapter and a 3x learning rate for the pruned model
(``pruned.r``, ``pruned.lr``: v0.2's shipped recipes) by 13.6 (Financial PhraseBank, two seeds) and 8.4
(SciQ) points, at equal steps. At equal training compute ``oneshot`` with the same levers does better (study v3:
the full-depth stage trains a model that is not exported), so the shipped recipes use that; this remains the
default of a recipe that names no schedule.
"""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, ScheduleFacts, StageContext


@SCHEDULES.register(facts=ScheduleFacts(stages=2, needs_target_fraction=True))
def tuned_oneshot(ctx: StageContext) -> Decision:
    if ctx.stage == 0:
        return Decision()  # the full-depth fine-tune: the model that is scored, and the accuracy floor's reference
    if ctx.budget <= 0:
        return Decision(last=True)
    scores = ctx.score(ctx.recipe.scoring.granularity)
    return Decision(drop=[c for c, _ in scores.ranked()[: ctx.budget]], scores=scores, last=True)
