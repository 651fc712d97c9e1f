"""Activation norm: the mean L2 norm of what a candidate adds to the residual stream (its branch output).
A block that adds almost nothing is the cheapest to remove; TrimLLM uses this as its tie-breaker."""

from __future__ import annotations

from trimllm.scoring import SCORERS
from trimllm.scoring.residuals import token_average


def activation_norms(model, tokenizer, texts, candidates, batch_size: int = 8, max_length: int = 1024) -> dict:
    return token_average(model, tokenizer, texts, candidates, lambda before, after: (after - before).norm(dim=-1),
                         batch_size, max_length)


@SCORERS.register()
def activation_norm(model, tokenizer, calibration, candidates, batch_size: int = 8, max_length: int = 1024):
    return activation_norms(model, tokenizer, calibration.texts(), candidates, batch_size, max_length)
