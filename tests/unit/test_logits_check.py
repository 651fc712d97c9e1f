"""A saved model folder proves its reload: the recorded check matches plain transformers in a fresh process, and a
folder whose config lost what the structure needs (Gemma-3's ``layer_types`` not sliced) fails it loudly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import build_tiny, tiny_tokenizer
from trimllm import logits_check
from trimllm.export import cast_export, save_compressed
from trimllm.surgery import bypass_mlp, drop_blocks


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_a_saved_folder_matches_its_check_in_a_fresh_plain_process(model_type, tmp_path):
    model = build_tiny(model_type)
    drop_blocks(model, [0, 2])
    bypass_mlp(model, [4])
    save_compressed(model, tiny_tokenizer(), tmp_path / "out")
    result = logits_check.transformers_check(tmp_path / "out")
    assert result.ok and result.max_diff < 1e-4, result.line()
    check = logits_check.load(tmp_path / "out")
    assert check["top_ids"].shape == (logits_check.LENGTH, logits_check.TOP_K)


def test_an_unsliced_layer_types_fails_the_check(tmp_path):
    # Gemma-3 tiny: sliding, sliding, full, ... ; blocks 0 and 2 dropped leave [s, s, s, f]. A config that keeps the
    # first four of the original list ([s, s, f, s]) builds a model that runs, with the wrong attention per layer.
    model = build_tiny("gemma3_text")
    original = list(model.config.layer_types)
    drop_blocks(model, [0, 2])
    save_compressed(model, tiny_tokenizer(), tmp_path / "out")
    config_path = tmp_path / "out" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["layer_types"] != original[:4]
    config["layer_types"] = original[:4]
    config_path.write_text(json.dumps(config))
    result = logits_check.transformers_check(tmp_path / "out")
    assert not result.ok and "DIFFERENT" in result.line(), result.line()


def test_a_cast_folder_is_judged_at_its_dtype(tmp_path):
    model = build_tiny("qwen2")
    save_compressed(model, tiny_tokenizer(), tmp_path / "out")
    cast_export(tmp_path / "out", "bfloat16")
    result = logits_check.transformers_check(tmp_path / "out")
    assert result.limit == logits_check.TOLERANCE["bfloat16"] and result.ok, result.line()
    assert result.max_diff > 1e-4  # the cast did change the weights: the comparison sees real numbers


def test_compare_reads_the_recorded_tokens():
    check = {"top_ids": torch.tensor([[2, 0]]), "top_logprobs": torch.tensor([[-0.5, -1.0]])}
    logprobs = np.log(np.array([[0.3, 0.1, 0.6]]))
    result = logits_check.compare(check, logprobs, "x", 0.1)
    assert result.max_diff == pytest.approx(abs(np.log(0.3) + 1.0))
    assert result.mean_diff == pytest.approx((abs(np.log(0.6) + 0.5) + abs(np.log(0.3) + 1.0)) / 2)
    assert not result.ok
    assert logits_check.compare(check, logprobs, "x", 0.3, "mean").ok


def test_a_folder_without_a_check_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="trimllm_check.safetensors"):
        logits_check.load(tmp_path)


def test_the_deploy_proof_fails_loudly_on_a_broken_export(tmp_path):
    from trimllm.config import CompressConfig, Recipe
    from trimllm.deploy_proof import DeployProofFailed, prove

    model = build_tiny("gemma3_text")
    original = list(model.config.layer_types)
    drop_blocks(model, [0, 2])
    save_compressed(model, tiny_tokenizer(), tmp_path / "final")
    assert prove(tmp_path, CompressConfig(runtime="transformers"), Recipe())["checks"][0]["ok"]
    config = json.loads((tmp_path / "final" / "config.json").read_text())
    config["layer_types"] = original[:4]  # the surgery's slicing undone
    (tmp_path / "final" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DeployProofFailed, match="DIFFERENT"):
        prove(tmp_path, CompressConfig(runtime="transformers"), Recipe())
    assert json.loads((tmp_path / "deploy" / "proof.json").read_text())["checks"][0]["ok"] is False
