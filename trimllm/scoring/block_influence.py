"""ShortGPT block influence (Men et al., 2024, "ShortGPT: Layers in large language models are more redundant
than you expect"): BI = 1 - cos(state before, state after), averaged over tokens. A block (or half) that barely
turns the residual stream changes little when removed."""

from __future__ import annotations

from torch.nn import functional as F

from trimllm.scoring import SCORERS
from trimllm.scoring.residuals import token_average


@SCORERS.register()
def block_influence(model, tokenizer, calibration, candidates, batch_size: int = 8, max_length: int = 1024):
    return token_average(model, tokenizer, calibration.texts(), candidates,
                         lambda before, after: 1 - F.cosine_similarity(before, after, dim=-1), batch_size, max_length)
