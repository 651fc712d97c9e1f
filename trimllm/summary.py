"""Human-readable descriptions of a (possibly compressed) model, for ``trimllm info`` and logs."""

from __future__ import annotations

from torch import nn

from trimllm.architectures import get_arch, get_submodule
from trimllm.plan import count_parameters
from trimllm.surgery import SkippedAttention, SkippedMLP, get_plan, unwrap


def block_rows(model: nn.Module) -> list[dict]:
    """One row per present block: original index, attention type, and which branches are active."""
    model = unwrap(model)
    arch, plan = get_arch(model), get_plan(model)
    layer_types = getattr(model.config, "layer_types", None)
    rows = []
    for pos, layer in enumerate(get_submodule(model, arch.layers_path)):
        rows.append(
            {
                "position": pos,
                "original": plan.kept[pos],
                "type": layer_types[pos] if layer_types else "full_attention",
                "attention": not isinstance(getattr(layer, arch.attention), SkippedAttention),
                "mlp": not isinstance(getattr(layer, arch.mlp), SkippedMLP),
                "params": count_parameters(layer),
                "frozen": plan.kept[pos] in plan.frozen,
            }
        )
    return rows


def describe(model: nn.Module) -> str:
    """A short text report: family, blocks, parameters and a table of blocks."""
    model = unwrap(model)
    plan = get_plan(model)
    params = count_parameters(model)
    lines = [
        f"model:       {plan.base_model}",
        f"family:      {model.config.model_type} ({type(model).__name__})",
        f"blocks:      {len(plan.kept)} of {plan.num_layers}",
        f"parameters:  {params:,}" + (f" ({params / plan.params_original:.1%} of base)" if plan.params_original else ""),
        f"hidden size: {model.config.hidden_size}, vocab: {model.config.vocab_size}",
        "",
        "pos  orig  type               attn  mlp   params",
    ]
    for row in block_rows(model):
        flags = " frozen" if row["frozen"] else ""
        lines.append(
            f"{row['position']:>3}  {row['original']:>4}  {row['type']:<18} {'yes' if row['attention'] else '-':<5} "
            f"{'yes' if row['mlp'] else '-':<5} {row['params']:>10,}{flags}"
        )
    if plan.dropped:
        lines.append(f"\ndropped blocks (original indices): {plan.dropped}")
    return "\n".join(lines)
