"""Exact structural edits: drop whole blocks, bypass attention or MLP halves, freeze blocks.

Every function takes *original* block indices (those of the base model), keeps the config, the ``layer_idx``
attributes and the model's :class:`~trimllm.plan.Plan` consistent, and returns the updated plan.

Sub-module bypass follows TrimLLM (Hu et al., 2024) and LLM-Drop (He et al., 2024, "What matters in
transformers? Not all attention is needed"): a block with its attention bypassed computes
``h = x + MLP(norm2(x))`` and one with its MLP bypassed computes ``h = x + Attn(norm1(x))``. The residual stream
``x`` is never replaced by its normalized version (the TrimLLM reference code does that, which changes the
function of every later block).
"""

from __future__ import annotations

import torch
from torch import nn

from trimllm.architectures import ArchSpec, get_arch, get_submodule, set_submodule, unwrap
from trimllm.plan import Plan

__all__ = [
    "SkippedAttention",
    "SkippedMLP",
    "apply_plan",
    "bypass_attention",
    "bypass_mlp",
    "drop_blocks",
    "freeze_blocks",
    "get_plan",
    "unwrap",
]


class SkippedAttention(nn.Module):
    """Stands in for a bypassed attention branch: adds exactly zero and computes no attention.

    It still advances the KV cache of its layer with a one-element-wide placeholder (``[batch, 1, seq, 1]``),
    because transformers reads the cache's sequence length from its first layer: a layer that never writes its
    cache entry would make generation restart positions at zero.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            batch, seq = hidden_states.shape[:2]
            placeholder = hidden_states.new_zeros(batch, 1, seq, 1)
            past_key_values.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}"


class SkippedMLP(nn.Module):
    """Stands in for a bypassed MLP branch: adds exactly zero and computes nothing."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def get_plan(model: nn.Module) -> Plan:
    """The plan attached to ``model``, creating an empty one (the model is its own base) if none is."""
    model = unwrap(model)
    plan = getattr(model, "trimllm_plan", None)
    if plan is None:
        plan = Plan.for_model(model)
        model.trimllm_plan = plan
    return plan


def drop_blocks(model: nn.Module, blocks: list[int]) -> Plan:
    """Physically remove decoder blocks.

    Renumbers the ``layer_idx`` attributes of the remaining blocks (the KV cache is indexed by them), sets
    ``num_hidden_layers``, slices per-layer config lists (Gemma-3 / Qwen ``layer_types``) and remaps index-valued
    fields (Qwen ``max_window_layers``), so that the saved model reloads with plain ``from_pretrained``.

    Args:
        model: a ``*ForCausalLM`` of a supported family (or a peft wrapper of one).
        blocks: original indices of the blocks to remove.

    Returns:
        The updated plan.

    Raises:
        ValueError: an index is out of range or already dropped, or no block would remain.
    """
    model = unwrap(model)
    plan, arch = get_plan(model), get_arch(model)
    blocks = _check_indices(plan, blocks, "drop")
    if len(blocks) >= len(plan.kept):
        raise ValueError(
            f"Cannot drop {len(blocks)} blocks: the model has only {len(plan.kept)} left and at least one must remain."
        )
    layers = get_submodule(model, arch.layers_path)
    survivors = [(orig, layers[pos]) for pos, orig in enumerate(plan.kept) if orig not in blocks]
    set_submodule(model, arch.layers_path, nn.ModuleList(layer for _, layer in survivors))
    for pos, (_, layer) in enumerate(survivors):
        _renumber(layer, arch, pos)
    old_kept = plan.kept
    plan.kept = [orig for orig, _ in survivors]
    _update_config(model.config, arch, old_kept, plan.kept)
    plan.dropped = sorted(set(plan.dropped) | set(blocks))
    for name in ("bypassed_attention", "bypassed_mlp", "frozen"):
        setattr(plan, name, [i for i in getattr(plan, name) if i not in blocks])
    return plan


def bypass_attention(model: nn.Module, blocks: list[int]) -> Plan:
    """Bypass the attention branch of ``blocks``: each then computes ``h = x + MLP(norm2(x))``.

    The attention weights are released; a :class:`SkippedAttention` takes the module's place. Norms that belong
    only to the attention branch (Gemma-3's post-attention norm) are left in place: applied to the branch's zero
    output they stay zero, so the block's function is exactly the formula above.
    """
    return _bypass(model, blocks, branch="attention")


def bypass_mlp(model: nn.Module, blocks: list[int]) -> Plan:
    """Bypass the MLP branch of ``blocks``: each then computes ``h = x + Attn(norm1(x))``."""
    return _bypass(model, blocks, branch="mlp")


def freeze_blocks(model: nn.Module, blocks: list[int]) -> Plan:
    """Exclude every parameter of ``blocks`` from training (``requires_grad=False``)."""
    model = unwrap(model)
    plan, arch = get_plan(model), get_arch(model)
    blocks = _check_indices(plan, blocks, "freeze")
    layers = get_submodule(model, arch.layers_path)
    for orig in blocks:
        layers[plan.position(orig)].requires_grad_(False)
    plan.frozen = sorted(set(plan.frozen) | set(blocks))
    return plan


def apply_plan(model: nn.Module, plan: Plan) -> Plan:
    """Re-create the structure a plan describes on a freshly loaded model.

    Works on the base model (all ``plan.num_layers`` blocks present: drops, bypasses and freezes) and on an
    exported checkpoint (``len(plan.kept)`` blocks present: only bypasses and freezes, since drops are already
    physical). Exported bypassed branches are zero-weight standard modules; this swaps in the fast
    :class:`SkippedAttention` / :class:`SkippedMLP`.
    """
    model = unwrap(model)
    n = model.config.num_hidden_layers
    if n == plan.num_layers:
        model.trimllm_plan = Plan.for_model(model)
        model.trimllm_plan.base_model = plan.base_model
        if plan.dropped:
            drop_blocks(model, plan.dropped)
    elif n == len(plan.kept):
        model.trimllm_plan = Plan.from_dict({**plan.to_dict(), "bypassed_attention": [], "bypassed_mlp": [], "frozen": []})
    else:
        raise ValueError(
            f"The plan describes a base model with {plan.num_layers} blocks, {len(plan.kept)} of them kept, "
            f"but the model has {n}. Load the plan's base model ({plan.base_model}) or the exported checkpoint."
        )
    if plan.bypassed_attention:
        bypass_attention(model, plan.bypassed_attention)
    if plan.bypassed_mlp:
        bypass_mlp(model, plan.bypassed_mlp)
    if plan.frozen:
        freeze_blocks(model, plan.frozen)
    return model.trimllm_plan


def _bypass(model: nn.Module, blocks: list[int], branch: str) -> Plan:
    model = unwrap(model)
    plan, arch = get_plan(model), get_arch(model)
    blocks = _check_indices(plan, blocks, f"bypass the {branch} of")
    layers = get_submodule(model, arch.layers_path)
    record = "bypassed_attention" if branch == "attention" else "bypassed_mlp"
    for orig in blocks:
        pos = plan.position(orig)
        if branch == "attention":
            setattr(layers[pos], arch.attention, SkippedAttention(layer_idx=pos))
        else:
            setattr(layers[pos], arch.mlp, SkippedMLP())
    setattr(plan, record, sorted(set(getattr(plan, record)) | set(blocks)))
    # A block with both branches bypassed is an identity: remove it physically (cheaper, and a standard export).
    empty = sorted(set(plan.bypassed_attention) & set(plan.bypassed_mlp))
    if empty and len(empty) < len(plan.kept):
        drop_blocks(model, empty)
    return plan


def _check_indices(plan: Plan, blocks, action: str) -> list[int]:
    blocks = sorted({int(b) for b in blocks})
    bad = [b for b in blocks if b not in plan.kept]
    if bad:
        why = [f"{b} (already dropped)" if b in plan.dropped else f"{b} (out of range)" for b in bad]
        raise ValueError(
            f"Cannot {action} block(s) {', '.join(why)}: indices are the base model's original block indices "
            f"(0..{plan.num_layers - 1}); blocks present now: {plan.kept}."
        )
    return blocks


def _renumber(layer: nn.Module, arch: ArchSpec, pos: int) -> None:
    for dotted in arch.layer_idx_attrs:
        owner_path, _, attr = dotted.rpartition(".")
        owner = get_submodule(layer, owner_path) if owner_path else layer
        if hasattr(owner, attr):
            setattr(owner, attr, pos)


def _update_config(config, arch: ArchSpec, old_kept: list[int], new_kept: list[int]) -> None:
    positions = [old_kept.index(orig) for orig in new_kept]
    config.num_hidden_layers = len(new_kept)
    for name in arch.per_layer_config:
        values = getattr(config, name, None)
        if values is not None:
            setattr(config, name, [values[p] for p in positions])
    for name in arch.prefix_count_config:
        value = getattr(config, name, None)
        if value is not None:
            # "the first N blocks" keeps meaning the same blocks: count the kept ones among the first N.
            setattr(config, name, sum(1 for p in positions if p < value))
