"""Candidates for removal, named in the base model's original indices: ``block.i``, ``attn.i``, ``mlp.i``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from trimllm.architectures import get_arch, get_layers
from trimllm.surgery import SkippedAttention, SkippedMLP, get_plan, unwrap

GRANULARITIES = ("block", "sublayer")


def parse(candidate: str) -> tuple[str, int]:
    """``"attn.5"`` -> ``("attn", 5)``."""
    kind, _, index = candidate.partition(".")
    if kind not in ("block", "attn", "mlp") or not index.isdigit():
        raise ValueError(f"Bad candidate name {candidate!r}; expected block.N, attn.N or mlp.N.")
    return kind, int(index)


def run_length_problems(options: dict) -> list[str]:
    """The checks of a run-length option ``n`` (a scorer that scores runs of n blocks: angular, teacher_kl)."""
    n = options["n"]
    ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    return [] if ok else [f"n = {n!r} must be an integer >= 1 (the run length of blocks)"]


def list_candidates(model: nn.Module, granularity: str = "block") -> list[str]:
    """Every removable unit still present: whole blocks, or the attention and MLP halves not yet bypassed."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    model = unwrap(model)
    plan = get_plan(model)
    if granularity == "block":
        return [f"block.{i}" for i in plan.kept]
    names = []
    for i in plan.kept:
        if i not in plan.bypassed_attention:
            names.append(f"attn.{i}")
        if i not in plan.bypassed_mlp:
            names.append(f"mlp.{i}")
    return names


def remove_candidate(model: nn.Module, candidate: str):
    """Apply the surgery a candidate names: drop the block, or bypass its attention or MLP half."""
    from trimllm.surgery import bypass_attention, bypass_mlp, drop_blocks

    kind, index = parse(candidate)
    return {"block": drop_blocks, "attn": bypass_attention, "mlp": bypass_mlp}[kind](model, [index])


class PassThrough(nn.Module):
    """A block that returns its input unchanged (a skipped block, for scoring)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def skipping(model: nn.Module, candidate: str) -> Iterator[None]:
    """Temporarily make ``model`` skip one candidate; its structure is restored on exit.

    Unlike surgery this keeps every index and config field unchanged, so it is cheap and exactly reversible.
    """
    model = unwrap(model)
    arch, plan = get_arch(model), get_plan(model)
    kind, index = parse(candidate)
    position = plan.position(index)
    layers = get_layers(model)
    layer = layers[position]
    if kind == "block":
        owner, attr, stand_in = layers, position, PassThrough()
    elif kind == "attn":
        owner, attr, stand_in = layer, arch.attention, SkippedAttention(layer_idx=position)
    else:
        owner, attr, stand_in = layer, arch.mlp, SkippedMLP()
    original = owner[attr] if kind == "block" else getattr(owner, attr)
    _assign(owner, attr, stand_in)
    try:
        yield
    finally:
        _assign(owner, attr, original)


@contextlib.contextmanager
def skipping_all(model: nn.Module, candidates: list[str]) -> Iterator[None]:
    """:func:`skipping` for several candidates at once (a removal of many blocks, measured before it is done)."""
    with contextlib.ExitStack() as stack:
        for candidate in candidates:
            stack.enter_context(skipping(model, candidate))
        yield


def _assign(owner, attr, module) -> None:
    if isinstance(attr, int):
        owner[attr] = module
    else:
        setattr(owner, attr, module)
