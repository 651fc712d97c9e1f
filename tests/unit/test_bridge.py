"""The linear bridge at a cut (trimllm.bridge): fitted by least squares, folded exactly into the family's own
weights, never worse than plain removal on the data it was fitted on."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import build_tiny
from trimllm.architectures import get_arch, get_layers, get_submodule
from trimllm.bridge import diagonal, fit_bridges, fold_bridge, runs
from trimllm.scoring.residuals import residual_streams
from trimllm.surgery import drop_blocks

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"]


def batches(seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        ids = torch.randint(3, 96, (4, 24), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, 18:] = 0  # right padding: not fitted on
        mask[3, 10:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def state_after(model, position: int, data: list[dict]) -> list[torch.Tensor]:
    """The residual state after the block at ``position`` (0-based, in the model as it is), real tokens only."""
    return [s.outputs[position][s.mask].double() for s in residual_streams(model, data)]


def test_runs_group_consecutive_blocks():
    assert runs([7, 3, 4, 9, 10, 11]) == [[3, 4], [7], [9, 10, 11]]
    assert runs([]) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_the_folded_bridge_is_the_bridge_and_never_worse_than_plain_removal(family):
    full = build_tiny(family)
    data = batches()
    bridges = fit_bridges(full, data, [2, 3], ridge=1e-3)
    assert list(bridges) == [1]  # keyed by the kept block before the run
    t = bridges[1]
    assert t.shape == ((32,) if diagonal(full) else (32, 32)) and diagonal(full) == (family == "gemma3_text")
    target = state_after(full, 3, data)

    plain = copy.deepcopy(full)
    drop_blocks(plain, [2, 3])
    hooked = copy.deepcopy(plain)  # the unfolded bridge: T applied to the MLP branch's output by a hook
    arch = get_arch(hooked)
    layer = get_layers(hooked)[1]
    branch_end = getattr(layer, arch.mlp_post_norm) if arch.mlp_post_norm else getattr(layer, arch.mlp)
    branch_end.register_forward_hook(lambda _m, _i, out: out * t if diagonal(full) else out @ t)
    folded = copy.deepcopy(plain)
    fold_bridge(folded, 1, t)

    ids, mask = data[0]["input_ids"], data[0]["attention_mask"]
    with torch.no_grad():
        want = hooked(input_ids=ids, attention_mask=mask).logits
        got = folded(input_ids=ids, attention_mask=mask).logits
        before = plain(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, before, atol=1e-3)  # the bridge changed something

    def error(model) -> float:
        return sum(float(((a - b) ** 2).sum()) for a, b in zip(state_after(model, 1, data), target, strict=True))

    assert error(folded) <= error(plain) * (1 + 1e-6)
    assert error(folded) < 0.99 * error(plain)  # and it helps: the fit is not the identity


def test_a_large_ridge_gives_plain_removal_and_block_0_has_no_bridge():
    full = build_tiny("llama")
    near_identity = fit_bridges(full, batches(), [3], ridge=1e9)[2]
    assert torch.allclose(near_identity, torch.eye(32), atol=1e-5)
    assert fit_bridges(full, batches(), [0, 1]) == {}  # nothing kept before the cut
    assert list(fit_bridges(full, batches(), [0, 4])) == [3]


def test_n_tokens_caps_the_fit_and_runs_are_over_the_blocks_kept_so_far():
    model = build_tiny("qwen2")
    few = fit_bridges(model, batches(), [3], n_tokens=10)[2]
    assert not torch.allclose(few, fit_bridges(model, batches(), [3])[2])
    drop_blocks(model, [3])
    assert list(fit_bridges(model, batches(), [2, 4])) == [1]  # 2 and 4 are neighbours now: one run
    with pytest.raises(ValueError, match=r"blocks \[3\] are not in the model"):
        fit_bridges(model, batches(), [3])


def test_the_fold_keeps_the_output_projection_where_the_family_has_it():
    model = build_tiny("llama")
    out = get_submodule(get_layers(model)[1].mlp, "down_proj")
    before = out.weight.clone()
    fold_bridge(model, 1, torch.eye(32))
    assert torch.allclose(out.weight, before)  # identity folds to the same weights


def test_drop_with_a_bridge_exports_a_plain_model_and_reports_the_loss(capsys, monkeypatch, tmp_path):
    """`trimllm drop --blocks --bridge TASK`: the folded model loads in plain transformers, with the family's own
    modules and the bridged block's output projection changed; the LM loss line names all three figures."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import run_cli, save_tiny

    tiny = save_tiny("llama", tmp_path / "tiny")
    code, out = run_cli(capsys, monkeypatch, "drop", tiny, "--blocks", "2,3", "--bridge", "sciq",
                        "--bridge-samples", "8", "--out", tmp_path / "bridged")
    assert code == 0, out
    assert "Bridge at the cuts after blocks [1]: LM loss on 8 held-out sciq texts" in out
    assert "at full depth" in out and "after plain removal" in out and "with the bridge" in out
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "bridged")
    assert plain.config.num_hidden_layers == 4 and type(plain).__name__ == "LlamaForCausalLM"
    original = build_tiny("llama")
    assert not torch.allclose(plain.model.layers[1].mlp.down_proj.weight, original.model.layers[1].mlp.down_proj.weight)
    assert torch.allclose(plain.model.layers[0].mlp.down_proj.weight, original.model.layers[0].mlp.down_proj.weight)


def test_the_recipe_turns_the_bridge_on_by_giving_it_settings():
    from tests.conftest import ROOT
    from trimllm.config import BridgeConfig
    from trimllm.errors import RecipeError
    from trimllm.validation import load_recipe

    smoke = ROOT / "recipes" / "smoke.yaml"
    assert load_recipe(smoke).bridge is None  # off by default: plain removal
    assert load_recipe(smoke, ["bridge={}"]).bridge == BridgeConfig()
    assert load_recipe(smoke, ["bridge.n_tokens=512"]).bridge == BridgeConfig(n_tokens=512)
    with pytest.raises(RecipeError, match=r"bridge.n_tokens = 0 must be >= 1[\s\S]*bridge.ridge = 0.0 must be > 0"):
        load_recipe(smoke, ["bridge={ridge: 0, n_tokens: 0}"])
    with pytest.raises(RecipeError, match="unknown key bridge.rige"):
        load_recipe(smoke, ["bridge.rige=1"])
