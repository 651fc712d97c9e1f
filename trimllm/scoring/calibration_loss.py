"""Calibration loss (SLEB, Song et al., 2024; Shortened LLaMA's PPL criterion, Kim et al., 2024): the increase
of the language-modelling loss on calibration text when the candidate is skipped.

``fast=True`` re-runs only the blocks from the candidate on (see :mod:`trimllm.scoring.forward`); ``fast=False``
runs the whole model once per candidate. Both give the same scores up to float rounding.
"""

from __future__ import annotations

import torch

from trimllm.scoring import SCORERS
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import skipping
from trimllm.scoring.forward import capture_calls, full_lm_loss, hidden_without, lm_loss_from_hidden


@SCORERS.register()
@torch.no_grad()
def calibration_loss(model, tokenizer, calibration, candidates, batch_size: int = 8, max_length: int = 1024,
                     fast: bool = True):
    batches = build_lm_batches(tokenizer, calibration.texts(), batch_size, max_length)
    device = next(model.parameters()).device
    base, totals, tokens = 0.0, {c: 0.0 for c in candidates}, 0
    for batch in batches:
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        if fast:
            calls, normed = capture_calls(model, **inputs)
            base_sum, n = lm_loss_from_hidden(model, normed, batch["labels"], normed=True)
            for c in candidates:
                totals[c] += lm_loss_from_hidden(model, hidden_without(model, calls, c), batch["labels"])[0]
        else:
            base_sum, n = full_lm_loss(model, inputs, batch["labels"])
            for c in candidates:
                with skipping(model, c):
                    totals[c] += full_lm_loss(model, inputs, batch["labels"])[0]
        base += base_sum
        tokens += n
    base_loss = base / tokens
    return {c: totals[c] / tokens - base_loss for c in candidates}, {"base_loss": base_loss, "fast": fast}

