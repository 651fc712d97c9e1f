"""ShortGPT block influence (Men et al., 2024, "ShortGPT: Layers in large language models are more redundant
than you expect"): BI = 1 - cos(state before, state after), averaged over tokens. A block (or half) that barely
turns the residual stream changes little when removed."""

from __future__ import annotations

from torch.nn import functional as F

from trimllm.scoring import SCORERS
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import parse
from trimllm.scoring.residuals import branch_states, residual_streams, token_mean
from trimllm.surgery import get_plan


@SCORERS.register("block_influence")
def block_influence(model, tokenizer, calibration, candidates, batch_size: int = 8, max_length: int = 1024, **_):
    plan = get_plan(model)
    totals = {c: 0.0 for c in candidates}
    tokens = 0
    for streams in residual_streams(model, build_lm_batches(tokenizer, calibration.texts(), batch_size, max_length)):
        for candidate in candidates:
            kind, index = parse(candidate)
            before, after = branch_states(streams, kind, plan.position(index))
            influence = 1 - F.cosine_similarity(before.float(), after.float(), dim=-1)
            totals[candidate] += token_mean(influence, streams.mask)[0]
        tokens += int(streams.mask.sum())
    return {c: v / tokens for c, v in totals.items()}
