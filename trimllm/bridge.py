"""A training-free linear bridge at each cut, folded into the model (ReplaceMe, Shopkhoev et al. 2025; LinearPatch,
2025).

Removing the run of blocks ``i..j`` feeds block ``j+1`` the output of block ``i-1`` instead of the state it was
trained on. The bridge is a linear map ``T`` on block ``i-1``'s MLP branch output ``M`` (what the branch adds to the
residual stream), fitted on calibration activations so that block ``i-1``'s output approximates the state after
block ``j``: with ``h`` the state before the MLP branch and ``y`` the state after the removed run,

    T = argmin ||M T - (y - h)||^2 + ridge * ||T - I||^2  =  (M^T M + ridge I)^-1 (M^T (y - h) + ridge I)

summed over the real tokens. ``T = I`` is plain removal, so on the data it was fitted on the bridge's error is never
above plain removal's. ``M T`` is linear in the MLP's output projection, so ``T`` folds into it exactly
(``W' = T^T W``): the exported model is the family's ordinary architecture, with no extra parameter. A family that
normalises the branch after its output projection (Gemma-3's post-feed-forward norm, :mod:`trimllm.architectures`)
gets a diagonal ``T`` folded into that norm's scale, the exact fold that norm allows.
"""

from __future__ import annotations

import torch
from torch import nn

from trimllm.architectures import get_arch, get_layers, get_submodule
from trimllm.scoring.candidates import skipping_all
from trimllm.scoring.forward import full_lm_loss
from trimllm.scoring.residuals import residual_streams
from trimllm.surgery import get_plan, unwrap


def runs(blocks: list[int]) -> list[list[int]]:
    """Consecutive runs of ``blocks`` (original indices): [3, 4, 7] -> [[3, 4], [7]]."""
    out: list[list[int]] = []
    for b in sorted(set(blocks)):
        if out and b == out[-1][-1] + 1:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def diagonal(model: nn.Module) -> bool:
    """Whether the family's bridge is diagonal (folded into a norm after the MLP) rather than a full matrix."""
    return get_arch(unwrap(model)).mlp_post_norm is not None


@torch.no_grad()
def fit_bridges(model: nn.Module, batches: list[dict], blocks: list[int], ridge: float = 1e-2,
                n_tokens: int | None = None) -> dict[int, torch.Tensor]:
    """The bridge of each run of ``blocks`` (original indices of blocks still in ``model``, about to be removed;
    a run is consecutive among the blocks kept so far), keyed by the original index of the kept block before the
    run (a run at the very start has none: no bridge, plain removal).

    ``ridge`` is relative to the mean diagonal of ``M^T M`` (scale-free); ``n_tokens`` caps the real tokens used.
    """
    kept = get_plan(model).kept
    missing = [b for b in blocks if b not in kept]
    if missing:
        raise ValueError(f"blocks {missing} are not in the model (kept: {kept})")
    cuts = {run[0] - 1: run[-1] for run in runs([kept.index(b) for b in blocks]) if run[0] > 0}  # positions
    if not cuts:
        return {}
    diag = diagonal(model)
    gram: dict[int, torch.Tensor] = {}
    cross: dict[int, torch.Tensor] = {}
    seen = 0
    for streams in residual_streams(model, batches):
        mask = streams.mask
        if n_tokens is not None:
            mask = mask & (torch.cumsum(mask.flatten().long(), 0).view_as(mask) <= n_tokens - seen)
        seen += int(mask.sum())
        for before, last in cuts.items():
            h, out = streams.mids[before][mask].double(), streams.outputs[before][mask].double()
            m, y = out - h, streams.outputs[last][mask].double() - h
            gram[before] = gram.get(before, 0) + ((m * m).sum(0) if diag else m.T @ m)
            cross[before] = cross.get(before, 0) + ((m * y).sum(0) if diag else m.T @ y)
        if n_tokens is not None and seen >= n_tokens:
            break
    return {kept[before]: _solve(gram[before], cross[before], ridge, diag) for before in cuts}


def _solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float, diag: bool) -> torch.Tensor:
    scale = ridge * float(gram.mean() if diag else gram.diagonal().mean())
    if diag:
        return ((cross + scale) / (gram + scale)).float()
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + scale * eye, cross + scale * eye).float()


@torch.no_grad()
def fold_bridge(model: nn.Module, before: int, bridge: torch.Tensor) -> None:
    """Fold ``bridge`` into block ``before`` (original index, still present): its MLP branch output ``M`` becomes
    ``M T`` exactly."""
    model = unwrap(model)
    arch, plan = get_arch(model), get_plan(model)
    layer = get_layers(model)[plan.kept.index(before)]
    if arch.mlp_post_norm is not None:  # diagonal: the norm scales by (offset + weight)
        norm = getattr(layer, arch.mlp_post_norm)
        scale = (arch.norm_weight_offset + norm.weight.float()) * bridge.to(norm.weight.device)
        norm.weight.copy_((scale - arch.norm_weight_offset).to(norm.weight.dtype))
        return
    out = get_submodule(getattr(layer, arch.mlp), arch.mlp_out[0])
    t = bridge.to(out.weight.device, torch.float32)
    out.weight.copy_((t.T @ out.weight.float()).to(out.weight.dtype))  # y = x W^T: (x W^T) T = x (T^T W)^T
    if out.bias is not None:
        out.bias.copy_((out.bias.float() @ t).to(out.bias.dtype))


@torch.no_grad()
def lm_loss(model: nn.Module, batches: list[dict]) -> float:
    """Mean next-token cross-entropy over the real tokens of language-modelling batches (``labels`` -100 on padding)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
        summed, n = full_lm_loss(model, inputs, batch["labels"])
        total, count = total + summed, count + n
    return total / max(count, 1)


def bridge_cuts(model: nn.Module, blocks: list[int], fit: list[dict], held_out: list[dict], ridge: float = 1e-2,
                n_tokens: int | None = None) -> dict:
    """Fit the bridges of removing ``blocks`` on the batches ``fit`` and fold them into ``model`` (the blocks stay:
    remove them next); the LM loss on ``held_out`` at full depth, after plain removal and with the bridges."""
    bridges = fit_bridges(model, fit, blocks, ridge, n_tokens)
    losses = {"full": lm_loss(model, held_out), "plain": _without(model, blocks, held_out)}
    for before, bridge in bridges.items():
        fold_bridge(model, before, bridge)
    losses["bridge"] = _without(model, blocks, held_out)
    return {"bridged_cuts": sorted(bridges), "lm_loss": {k: round(v, 4) for k, v in losses.items()}}


def _without(model: nn.Module, blocks: list[int], batches: list[dict]) -> float:
    with skipping_all(model, [f"block.{b}" for b in blocks]):
        return lm_loss(model, batches)
