"""No dropping: full-depth LoRA (or full) fine-tuning, the reference every compressed model is compared with."""

from __future__ import annotations

from trimllm.schedules import SCHEDULES, Decision, StageContext


@SCHEDULES.register()
def none(ctx: StageContext) -> Decision:
    return Decision(last=True)
