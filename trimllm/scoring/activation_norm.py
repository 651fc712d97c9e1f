"""Activation norm: the mean L2 norm of what a candidate adds to the residual stream (its branch output).
A block that adds almost nothing is the cheapest to remove; TrimLLM uses this as its tie-breaker."""

from __future__ import annotations

from trimllm.scoring import SCORERS
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import parse
from trimllm.scoring.residuals import branch_states, residual_streams, token_mean
from trimllm.surgery import get_plan


def activation_norms(model, tokenizer, texts, candidates, batch_size: int = 8, max_length: int = 1024) -> dict:
    plan = get_plan(model)
    totals = {c: 0.0 for c in candidates}
    tokens = 0
    for streams in residual_streams(model, build_lm_batches(tokenizer, texts, batch_size, max_length)):
        for candidate in candidates:
            kind, index = parse(candidate)
            before, after = branch_states(streams, kind, plan.position(index))
            totals[candidate] += token_mean((after.float() - before.float()).norm(dim=-1), streams.mask)[0]
        tokens += int(streams.mask.sum())
    return {c: v / tokens for c, v in totals.items()}


@SCORERS.register("activation_norm")
def activation_norm(model, tokenizer, calibration, candidates, batch_size: int = 8, max_length: int = 1024, **_):
    return activation_norms(model, tokenizer, calibration.texts(), candidates, batch_size, max_length)
