"""Real tier: the packaged SmolLM2-135M and Gemma-3-270M, end to end (GGUF converted once, then cached)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import ROOT
from trimllm.architectures import get_arch, get_layers
from trimllm.export import save_compressed
from trimllm.modeling import SOURCE_FILE, cache_root, load_model
from trimllm.surgery import bypass_attention, bypass_mlp, drop_blocks

pytestmark = pytest.mark.real

PLAIN_LOGITS = (
    "import sys, torch; from transformers import AutoModelForCausalLM;"
    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval();"
    "ids = torch.load(sys.argv[2]);"
    "out = m(input_ids=ids, use_cache=False);"
    "torch.save({'logits': out.logits.detach(), 'layers': m.config.num_hidden_layers}, sys.argv[3])"
)


class Identity(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@pytest.fixture(scope="module")
def smollm():
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m", device="cpu")


def encode(tokenizer, text):
    return tokenizer(text, return_tensors="pt").input_ids


def skipping_reference_logits(model, blocks, ids):
    reference = copy.deepcopy(model)
    layers = get_layers(reference)
    for index in blocks:
        layers[index] = Identity()
    with torch.no_grad():
        return reference(input_ids=ids, use_cache=False).logits


def plain_process_logits(directory: Path, ids: torch.Tensor, tmp_path: Path) -> dict:
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", PLAIN_LOGITS, directory, tmp_path / "ids.pt", tmp_path / "out.pt"], check=True)
    return torch.load(tmp_path / "out.pt")


def assert_generation_cache_consistent(model, ids, new_tokens=16):
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False)
    with_cache = model.generate(ids, use_cache=True, **kwargs)
    without_cache = model.generate(ids, use_cache=False, **kwargs)
    assert with_cache.shape[1] > ids.shape[1]
    assert torch.equal(with_cache, without_cache)


def test_packaged_models_are_converted_once_and_cached(smollm, gemma):
    for name in ("smollm2-135m", "gemma3-270m"):
        converted = list((cache_root() / "converted").glob(f"{name}-*"))
        assert len(converted) == 1 and (converted[0] / SOURCE_FILE).is_file()
        assert (converted[0] / "model.safetensors").is_file()
    assert smollm[0].config.model_type == "llama" and smollm[0].config.num_hidden_layers == 30
    assert gemma[0].config.model_type == "gemma3_text" and gemma[0].config.num_hidden_layers == 18
    assert "quantization_config" not in smollm[0].config.to_dict()


def test_smollm_knows_something(smollm):
    model, tokenizer = smollm
    out = model.generate(encode(tokenizer, "The capital of France is"), max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])


def test_cli_drop_smollm_matches_skipping_reference(smollm, tmp_path):
    model, tokenizer = smollm
    blocks = [3, 13, 14, 15, 17]
    out = tmp_path / "D"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "trimllm", "drop", "smollm2-135m", "--blocks", "3,13,14,15,17", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env)
    ids = encode(tokenizer, "Photosynthesis converts light energy into chemical energy stored in glucose.")
    plain = plain_process_logits(out, ids, tmp_path)
    assert plain["layers"] == 25
    assert torch.equal(plain["logits"], skipping_reference_logits(model, blocks, ids))


def test_smollm_dropped_generation_cache_equals_no_cache(smollm):
    model = copy.deepcopy(smollm[0])
    drop_blocks(model, [3, 13, 14, 15, 17])
    assert_generation_cache_consistent(model, encode(smollm[1], "Water boils at a temperature of"))


def test_gemma_drop_full_attention_block_roundtrip(gemma, tmp_path):
    model, tokenizer = gemma
    full = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]
    blocks = [full[0], 7, 8]  # a full-attention block and two sliding ones
    # Longer than the 512-token sliding window, so the sliding layers really slide.
    ids = encode(tokenizer, " ".join(["The mitochondria is the powerhouse of the cell."] * 60))[:, :600]
    reference = skipping_reference_logits(model, blocks, ids)
    compressed = copy.deepcopy(model)
    drop_blocks(compressed, blocks)
    assert compressed.config.layer_types.count("full_attention") == len(full) - 1
    save_compressed(compressed, tokenizer, tmp_path / "G")
    plain = plain_process_logits(tmp_path / "G", ids, tmp_path)
    assert plain["layers"] == 15
    assert torch.equal(plain["logits"], reference)
    assert_generation_cache_consistent(compressed, ids[:, :540], new_tokens=8)


def test_real_bypass_attention_is_x_plus_mlp_of_norm_x(smollm):
    model = copy.deepcopy(smollm[0])
    bypass_attention(model, [5])
    layer = get_layers(model)[5]
    captured = {}
    handle = layer.register_forward_hook(
        lambda m, args, kwargs, out: captured.update(x=args[0] if args else kwargs["hidden_states"], h=out),
        with_kwargs=True,
    )
    with torch.no_grad():
        model(input_ids=encode(smollm[1], "Cells divide by mitosis."), use_cache=False)
        handle.remove()
        x = captured["x"]
        expected = x + layer.mlp(layer.post_attention_layernorm(x))
    torch.testing.assert_close(captured["h"], expected, rtol=0, atol=1e-6)


def test_real_bypass_export_plain_and_fast_agree(gemma, tmp_path):
    model, tokenizer = gemma
    compressed = copy.deepcopy(model)
    bypass_attention(compressed, [0, 4])
    bypass_mlp(compressed, [9])
    ids = encode(tokenizer, "Enzymes lower the activation energy of reactions.")
    with torch.no_grad():
        expected = compressed(input_ids=ids, use_cache=False).logits
    save_compressed(compressed, tokenizer, tmp_path / "B")
    plain = plain_process_logits(tmp_path / "B", ids, tmp_path)
    torch.testing.assert_close(plain["logits"], expected, rtol=0, atol=1e-5)
    fast, _ = load_model(tmp_path / "B", device="cpu")
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids, use_cache=False).logits, expected)
    assert_generation_cache_consistent(fast, ids, new_tokens=12)
    assert get_arch(fast).model_type == "gemma3_text"
