"""Teacher KL: how far the model's own next-token distribution moves on domain text when a candidate (or a run of
``n`` blocks from it) is skipped, ``KL(p_model || p_without)`` per token, averaged over the calibration text.

Block influence (ShortGPT, Men et al. 2024) and angular distance (Gromov et al. 2024) look at one residual state;
the loss-based criteria (SLEB, Song et al. 2024; Shortened LLaMA's PPL, Kim et al. 2024) at the gold token only.
The KL compares the whole predicted distribution with the one a distillation stage will ask the pruned model to
match: in ``tuned_oneshot`` the scored model is the domain-tuned stage 0, which is the teacher (Minitron, Sreenivas
et al. 2024, rank by such output-level importance before distilling). Like calibration_loss it re-runs only the
blocks after the candidate from one captured base pass (:mod:`trimllm.scoring.forward`), so a scan costs about a
forward per candidate's suffix. With ``n`` > 1 a block candidate is scored by the run of ``n`` blocks it starts
(cut at the last block), for removing contiguous runs at once.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from trimllm.architectures import final_norm, lm_logits
from trimllm.scoring import SCORERS
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import run_length_problems
from trimllm.scoring.forward import capture_calls, hidden_without, shifted_targets


def _kl_sum(model, base: torch.Tensor, hidden: torch.Tensor, labels: torch.Tensor, chunk: int = 512) -> float:
    """``KL(base || without)`` summed over the labelled positions (``base``: the base model's final normed states
    there; both LM heads run in chunks, so no [tokens, vocabulary] tensor is kept)."""
    selected, _ = shifted_targets(hidden, labels)
    total = 0.0
    for start in range(0, selected.shape[0], chunk):
        log_p = F.log_softmax(lm_logits(model, base[start:start + chunk]).float(), -1)
        log_q = F.log_softmax(lm_logits(model, final_norm(model, selected[start:start + chunk])).float(), -1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total


@SCORERS.register(checks=run_length_problems)
@torch.no_grad()
def teacher_kl(model, tokenizer, calibration, candidates, n: int = 1, batch_size: int = 8, max_length: int = 1024):
    device = next(model.parameters()).device
    totals, tokens = {c: 0.0 for c in candidates}, 0
    for batch in build_lm_batches(tokenizer, calibration.texts(), batch_size, max_length):
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        calls, normed = capture_calls(model, **inputs)
        base, targets = shifted_targets(normed, batch["labels"])
        for c in candidates:
            totals[c] += _kl_sum(model, base, hidden_without(model, calls, c, n), batch["labels"])
        tokens += int(targets.numel())
    return {c: v / max(tokens, 1) for c, v in totals.items()}, {"n": n}
