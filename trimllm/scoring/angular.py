"""Angular distance (Gromov et al., 2024, "The unreasonable ineffectiveness of the deeper layers"):
d(l, n) = arccos(cos(h_l, h_{l+n})) / pi between the residual state entering block l and the one leaving block
l+n-1, at each sequence's last token, averaged over samples. The run of n blocks with the smallest distance is
the one to remove; candidate ``block.l`` is scored by the run that starts at it (runs that would pass the last
block are cut there). Halves are scored with n = 1 across the half."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from trimllm.scoring import SCORERS
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import parse, run_length_problems
from trimllm.scoring.residuals import branch_states, residual_streams
from trimllm.surgery import get_plan


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.arccos(F.cosine_similarity(a.float(), b.float(), dim=-1).clamp(-1, 1)) / math.pi


@SCORERS.register(checks=run_length_problems)
def angular(model, tokenizer, calibration, candidates, n: int = 1, batch_size: int = 8, max_length: int = 1024):
    plan = get_plan(model)
    last_pos = len(plan.kept) - 1
    totals = {c: 0.0 for c in candidates}
    samples = 0
    for streams in residual_streams(model, build_lm_batches(tokenizer, calibration.texts(), batch_size, max_length)):
        for candidate in candidates:
            kind, index = parse(candidate)
            pos = plan.position(index)
            if kind == "block":
                before, after = streams.inputs[pos], streams.outputs[min(pos + n - 1, last_pos)]
            else:
                before, after = branch_states(streams, kind, pos)
            totals[candidate] += float(_angle(streams.last_token(before), streams.last_token(after)).sum())
        samples += streams.mask.shape[0]
    return {c: v / samples for c, v in totals.items()}, {"n": n}
