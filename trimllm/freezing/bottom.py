"""Partial-layer fine-tuning (Lu et al. 2024, "Reassessing Layer Pruning in LLMs", Section 5: after pruning,
fine-tune only the last blocks and the LM head; +5 points over LoRA in their Table 2): the lowest
``freeze.fraction`` of the kept blocks train frozen at every stage, chosen anew after each removal. With
``lora.method: full`` the rest (the top blocks, the final norm and the LM head) is fine-tuned in full."""

from __future__ import annotations

from trimllm.freezing import FREEZING, FreezeContext


@FREEZING.register()
def bottom(ctx: FreezeContext) -> list[int]:
    return ctx.plan.kept[: ctx.count]


bottom.anew = True
