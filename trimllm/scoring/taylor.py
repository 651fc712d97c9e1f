"""First-order Taylor importance (Shortened LLaMA "Taylor+", Kim et al., 2024; Molchanov et al., 2019):
I = sum over the candidate's weights of |w * dL/dw|, with L the language-modelling loss on calibration text.
Gradients are accumulated over the whole calibration set, then cleared; ``requires_grad`` is restored."""

from __future__ import annotations

import torch

from trimllm.architectures import get_arch, get_layers
from trimllm.scoring import SCORERS
from trimllm.scoring.calibration import build_lm_batches
from trimllm.scoring.candidates import parse
from trimllm.surgery import get_plan


def candidate_parameters(model, candidate: str) -> list[torch.nn.Parameter]:
    """The weights a candidate owns: the whole block, or one branch with its norms."""
    arch, plan = get_arch(model), get_plan(model)
    kind, index = parse(candidate)
    layer = get_layers(model)[plan.position(index)]
    if kind == "block":
        return list(layer.parameters())
    names = (arch.attention, *arch.attention_norms) if kind == "attn" else (arch.mlp, *arch.mlp_norms)
    return [p for name in names for p in getattr(layer, name).parameters()]


@SCORERS.register()
def taylor(model, tokenizer, calibration, candidates, batch_size: int = 8, max_length: int = 1024):
    owned = {c: candidate_parameters(model, c) for c in candidates}
    params = {id(p): p for ps in owned.values() for p in ps}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    device = next(model.parameters()).device
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in params)
            p.grad = None
        batches = build_lm_batches(tokenizer, calibration.texts(), batch_size, max_length)
        total_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        for batch in batches:
            out = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
            n = int((batch["labels"][:, 1:] != -100).sum())
            (out.loss * n / total_tokens).backward()  # token-weighted mean over the whole set
        with torch.no_grad():
            scores = {
                c: float(sum((p * p.grad).abs().sum() for p in ps if p.grad is not None)) for c, ps in owned.items()
            }
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(flags[id(p)])
    return scores
