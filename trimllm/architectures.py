"""Architecture facts as data: one row per Hugging Face ``model_type``.

Every algorithm in trimllm (surgery, scoring, export) reads these rows instead of branching on the model family,
so supporting a new family means adding one row here plus a tiny-config round-trip test
(``tests/unit/test_surgery.py``). The idea follows mergekit's architecture tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trimllm.errors import UnsupportedArchitectureError  # noqa: F401  (raised here; re-exported)
from trimllm.registry import did_you_mean


@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one decoder family.

    Attributes:
        model_type: ``config.model_type`` this row applies to.
        layers_path: dotted path from the ``*ForCausalLM`` model to the ``nn.ModuleList`` of decoder blocks.
        final_norm: dotted path to the norm applied after the last block (before the LM head).
        attention: attribute of a block holding self-attention.
        mlp: attribute of a block holding the feed-forward network.
        attention_norms: norms that belong to the attention branch (pre-norm first, then any post-norm).
        mlp_norms: norms that belong to the MLP branch.
        attention_out: output projection(s) of attention, relative to ``attention``; zeroing them makes the
            branch add exactly zero to the residual stream (used by the standard export of a bypass).
        mlp_out: output projection(s) of the MLP, relative to ``mlp``.
        layer_idx_attrs: attributes, relative to a block, that hold the block's index and must be renumbered
            after blocks are removed (the KV cache is indexed by ``self_attn.layer_idx``).
        per_layer_config: config fields that are lists with one entry per block and must be sliced.
        prefix_count_config: index-valued config fields of the form "the first N blocks ..." (Qwen's
            ``max_window_layers``), remapped to the number of kept blocks whose original index is below N.
        mlp_post_norm: a norm applied to the MLP branch after its output projection (Gemma-3), relative to a block;
            a linear bridge (:mod:`trimllm.bridge`) then folds into its scale, diagonal, instead of into ``mlp_out``.
        norm_weight_offset: the family's norms scale by ``offset + weight`` (Gemma: 1), not by ``weight``.
    """

    model_type: str
    layers_path: str = "model.layers"
    final_norm: str = "model.norm"
    attention: str = "self_attn"
    mlp: str = "mlp"
    attention_norms: tuple[str, ...] = ("input_layernorm",)
    mlp_norms: tuple[str, ...] = ("post_attention_layernorm",)
    attention_out: tuple[str, ...] = ("o_proj",)
    mlp_out: tuple[str, ...] = ("down_proj",)
    layer_idx_attrs: tuple[str, ...] = ("self_attn.layer_idx",)
    per_layer_config: tuple[str, ...] = ()
    prefix_count_config: tuple[str, ...] = field(default=())
    mlp_post_norm: str | None = None
    norm_weight_offset: float = 0.0


_ROWS = [
    ArchSpec("llama"),
    ArchSpec("mistral"),
    ArchSpec("qwen2", per_layer_config=("layer_types",), prefix_count_config=("max_window_layers",)),
    ArchSpec("qwen3", per_layer_config=("layer_types",), prefix_count_config=("max_window_layers",)),
    # Gemma-3 wraps each branch in a pre- and a post-norm; bypassing a branch removes both with it.
    ArchSpec(
        "gemma3_text",
        attention_norms=("input_layernorm", "post_attention_layernorm"),
        mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
        layer_idx_attrs=("layer_idx", "self_attn.layer_idx"),
        per_layer_config=("layer_types",),
        mlp_post_norm="post_feedforward_layernorm",
        norm_weight_offset=1.0,
    ),
    # Phi-3 fuses q/k/v and gate/up, but the output projections keep Llama's names.
    ArchSpec("phi3"),
]

ARCHITECTURES: dict[str, ArchSpec] = {row.model_type: row for row in _ROWS}


def get_arch(model_or_type: nn.Module | str) -> ArchSpec:
    """Return the architecture row for a model (or a ``model_type`` string).

    Raises:
        UnsupportedArchitectureError: the family has no row; the message lists the supported ones.
    """
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"trimllm does not support model_type {model_type!r} yet.{did_you_mean(model_type, ARCHITECTURES)} "
            f"Supported: {', '.join(sorted(ARCHITECTURES))}. To add a family, add a row to "
            "trimllm/architectures.py and a tiny-config round-trip test."
        ) from None


def get_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``model`` (a ``*ForCausalLM``), wherever its family keeps them."""
    return get_submodule(model, get_arch(model).layers_path)


def get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def set_submodule(root: nn.Module, dotted: str, value: nn.Module) -> None:
    parent, _, name = dotted.rpartition(".")
    setattr(get_submodule(root, parent) if parent else root, name, value)


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack without its LM head (``model.model`` for the supported families)."""
    model = unwrap(model)
    return get_submodule(model, get_arch(model).layers_path.rpartition(".")[0])


def final_norm(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    model = unwrap(model)
    return get_submodule(model, get_arch(model).final_norm)(hidden)


def lm_logits(model: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """LM-head logits of already-normed hidden states (with the family's final soft-capping, if any)."""
    model = unwrap(model)
    logits = model.get_output_embeddings()(normed).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def unwrap(model: nn.Module) -> nn.Module:
    """The plain ``*ForCausalLM`` inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
