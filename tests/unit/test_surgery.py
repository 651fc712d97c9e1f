"""Exactness of drop / bypass / freeze on tiny random models of every supported family."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import ARCHS, build_tiny
from trimllm.architectures import ARCHITECTURES, UnsupportedArchitectureError, get_arch, get_layers
from trimllm.plan import Plan
from trimllm.surgery import (
    SkippedAttention,
    SkippedMLP,
    apply_plan,
    bypass_attention,
    bypass_mlp,
    drop_blocks,
    freeze_blocks,
    get_plan,
)


class Identity(nn.Module):
    """A block that returns its input: the reference for "this block was skipped"."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def skipping_reference(model, blocks):
    """The original model with ``blocks`` replaced by identities (config, indices and cache untouched)."""
    reference = copy.deepcopy(model)
    layers = get_layers(reference)
    for index in blocks:
        layers[index] = Identity()
    return reference


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def test_every_required_family_has_a_row():
    assert set(ARCHS) <= set(ARCHITECTURES)


def test_unsupported_family_error_names_supported_ones():
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_arch("lama")
    message = str(err.value)
    assert "'lama'" in message and "Did you mean 'llama'" in message
    for family in ARCHS:
        assert family in message


def test_drop_blocks_equals_skipping_them(tiny, input_ids):
    blocks = [0, 2, 4]
    reference = skipping_reference(tiny, blocks)
    plan = drop_blocks(tiny, blocks)
    assert tiny.config.num_hidden_layers == 3 == len(get_layers(tiny))
    assert plan.kept == [1, 3, 5] and plan.dropped == blocks
    assert torch.equal(logits(tiny, input_ids), logits(reference, input_ids))


def test_drop_renumbers_layer_idx_and_slices_config(tiny):
    original_types = list(getattr(tiny.config, "layer_types", None) or [])
    drop_blocks(tiny, [1, 2])
    for pos, layer in enumerate(get_layers(tiny)):
        assert layer.self_attn.layer_idx == pos
        if hasattr(layer, "layer_idx"):
            assert layer.layer_idx == pos
    if original_types:
        assert tiny.config.layer_types == [original_types[i] for i in (0, 3, 4, 5)]


def test_qwen_max_window_layers_keeps_meaning():
    model = build_tiny("qwen2")
    assert model.config.max_window_layers == 3  # blocks 0-2 full attention, 3-5 sliding
    drop_blocks(model, [1, 4])
    assert model.config.max_window_layers == 2  # kept 0, 2 below the boundary; 3, 5 above it
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2


def test_successive_drops_use_original_indices(input_ids):
    model = build_tiny("llama")
    reference = skipping_reference(model, [1, 4])
    drop_blocks(model, [4])
    plan = drop_blocks(model, [1])  # still the base model's index, not a position
    assert plan.kept == [0, 2, 3, 5] and plan.dropped == [1, 4]
    assert torch.equal(logits(model, input_ids), logits(reference, input_ids))


@pytest.mark.parametrize("bad", [[6], [-1], [2, 2, 9]])
def test_bad_indices_get_one_clear_error(bad):
    model = build_tiny("llama")
    with pytest.raises(ValueError, match="original block indices"):
        drop_blocks(model, bad)


def test_dropping_a_dropped_block_or_everything_is_refused():
    model = build_tiny("llama")
    drop_blocks(model, [2])
    with pytest.raises(ValueError, match="already dropped"):
        bypass_mlp(model, [2])
    with pytest.raises(ValueError, match="at least one must remain"):
        drop_blocks(model, [0, 1, 3, 4, 5])


def test_generate_with_cache_equals_without_after_drop(tiny, input_ids):
    drop_blocks(tiny, [0, 3])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = tiny.generate(input_ids, use_cache=True, **kwargs)
    without_cache = tiny.generate(input_ids, use_cache=False, **kwargs)
    assert with_cache.shape[1] == input_ids.shape[1] + 8
    assert torch.equal(with_cache, without_cache)


def _block_io(model, index, ids):
    """Input and output of block ``index`` during a forward pass."""
    captured = {}
    layer = get_layers(model)[index]

    def hook(module, args, kwargs, output):
        captured["x"] = args[0] if args else kwargs["hidden_states"]
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = layer.register_forward_hook(hook, with_kwargs=True)
    try:
        logits(model, ids)
    finally:
        handle.remove()
    return captured["x"], captured["h"]


def _branch(model, layer, names, module_attr, x):
    """Apply a branch by hand: its pre-norm, module, then any post-norm."""
    out = getattr(layer, names[0])(x)
    if module_attr == "mlp":
        out = layer.mlp(out)
    for post_norm in names[1:]:
        out = getattr(layer, post_norm)(out)
    return out


@pytest.mark.parametrize("model_type", ARCHS)
def test_bypass_attention_is_x_plus_mlp_of_norm_x(model_type, input_ids):
    model = build_tiny(model_type)
    arch = get_arch(model)
    bypass_attention(model, [2])
    layer = get_layers(model)[2]
    assert isinstance(layer.self_attn, SkippedAttention)
    x, h = _block_io(model, 2, input_ids)
    with torch.no_grad():
        expected = x + _branch(model, layer, arch.mlp_norms, "mlp", x)
    torch.testing.assert_close(h, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model_type", ARCHS)
def test_bypass_mlp_is_x_plus_attention_of_norm_x(model_type, input_ids):
    model = build_tiny(model_type)
    arch = get_arch(model)
    reference = build_tiny(model_type)
    bypass_mlp(model, [1])
    assert isinstance(get_layers(model)[1].mlp, SkippedMLP)
    x, h = _block_io(model, 1, input_ids)
    # Attention output of the unmodified block on the same input, captured from the reference model.
    attn_out = {}
    ref_layer = get_layers(reference)[1]
    handle = ref_layer.self_attn.register_forward_hook(lambda m, a, o: attn_out.setdefault("a", o[0]))
    logits(reference, input_ids)
    handle.remove()
    with torch.no_grad():
        branch = attn_out["a"]
        for post_norm in arch.attention_norms[1:]:
            branch = getattr(ref_layer, post_norm)(branch)
    # Block 0 is unchanged, so block 1 sees the same input in both models.
    torch.testing.assert_close(h, x + branch, rtol=0, atol=1e-6)


def test_residual_is_not_replaced_by_its_normalized_version(input_ids):
    # The TrimLLM reference bug: h = norm(x) + MLP(norm(x)). Make sure our block output differs from that.
    model = build_tiny("llama")
    bypass_attention(model, [3])
    layer = get_layers(model)[3]
    x, h = _block_io(model, 3, input_ids)
    with torch.no_grad():
        buggy = layer.post_attention_layernorm(x) + layer.mlp(layer.post_attention_layernorm(x))
    assert not torch.allclose(h, buggy, atol=1e-3)


@pytest.mark.parametrize("first", [0, 1])
def test_generate_with_cache_when_attention_is_bypassed(tiny, input_ids, first):
    # Bypassing block 0's attention is the hard case: transformers reads the cache length from layer 0.
    bypass_attention(tiny, [first, 4])
    bypass_mlp(tiny, [2])
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with_cache = tiny.generate(input_ids, use_cache=True, **kwargs)
    without_cache = tiny.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without_cache)


def test_bypass_releases_the_branch_parameters():
    model = build_tiny("llama")
    before = sum(p.numel() for p in model.parameters())
    attn_params = sum(p.numel() for p in get_layers(model)[1].self_attn.parameters())
    bypass_attention(model, [1])
    assert sum(p.numel() for p in model.parameters()) == before - attn_params


def test_freeze_blocks_only_freezes_those_blocks():
    model = build_tiny("llama")
    drop_blocks(model, [0])
    plan = freeze_blocks(model, [2, 5])
    layers = get_layers(model)
    for pos, orig in enumerate(plan.kept):
        trainable = [p.requires_grad for p in layers[pos].parameters()]
        assert all(not t for t in trainable) if orig in (2, 5) else all(trainable)
    assert model.lm_head.weight.requires_grad
    assert plan.frozen == [2, 5]


def test_plan_is_json_roundtrippable_and_named_in_original_indices(tmp_path):
    model = build_tiny("gemma3_text")
    drop_blocks(model, [2])
    bypass_attention(model, [4])
    bypass_mlp(model, [0])
    plan = get_plan(model)
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == plan
    assert loaded.modules()["dropped"] == ["block.2", "attn.4", "mlp.0"]
    assert plan.to_dict()["blocks_kept"] == 5


def test_apply_plan_rebuilds_the_same_model_from_the_base(tiny, input_ids):
    base = copy.deepcopy(tiny)
    drop_blocks(tiny, [1, 5])
    bypass_attention(tiny, [0])
    bypass_mlp(tiny, [3])
    freeze_blocks(tiny, [2])
    plan = apply_plan(base, get_plan(tiny))
    assert plan.kept == get_plan(tiny).kept and plan.frozen == [2]
    assert torch.equal(logits(base, input_ids), logits(tiny, input_ids))


@torch.no_grad()
def test_incremental_decoding_with_bypassed_first_attention(tiny, input_ids):
    # A forward without cache_position reads the cache length from layer 0; a bypassed layer-0 attention must
    # still advance it, or the next token is placed at position 0.
    bypass_attention(tiny, [0])
    full = logits(tiny, input_ids)
    prefix = tiny(input_ids=input_ids[:, :8], use_cache=True)
    assert prefix.past_key_values.get_seq_length() == 8
    cache = prefix.past_key_values
    for t in range(8, input_ids.shape[1]):
        step = tiny(input_ids=input_ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits
        torch.testing.assert_close(step[:, -1], full[:, t], rtol=1e-4, atol=1e-5)


def test_block_with_both_halves_bypassed_is_dropped(input_ids):
    model = build_tiny("llama")
    reference = skipping_reference(model, [2])
    bypass_attention(model, [2])
    plan = bypass_mlp(model, [2])
    assert plan.dropped == [2] and plan.bypassed_attention == [] and plan.bypassed_mlp == []
    assert model.config.num_hidden_layers == 5
    assert torch.equal(logits(model, input_ids), logits(reference, input_ids))
