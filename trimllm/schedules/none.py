"""No dropping: full-depth LoRA (or full) fine-tuning, the reference every compressed model is compared with."""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, ScheduleFacts, StageContext


@SCHEDULES.register(facts=ScheduleFacts(removes=False, full_depth_stage0=False, stages=1))
def none(ctx: StageContext) -> Decision:
    return Decision(last=True)
