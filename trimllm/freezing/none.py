"""No freezing: every kept block trains."""

from __future__ import annotations

from trimllm.freezing import FREEZING, FreezeContext


@FREEZING.register()
def none(ctx: FreezeContext) -> list[int]:
    return []
