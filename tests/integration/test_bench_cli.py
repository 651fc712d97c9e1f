"""`trimllm bench` on tiny checkpoints: figures for every model, ratios against the first, the weight-traffic bound,
and bad input rejected before any timing."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import build_tiny, flat, save_tiny, tiny_tokenizer
from trimllm.bench import decode, prefill, prompt_ids
from trimllm.cli import app
from trimllm.export import save_compressed
from trimllm.surgery import drop_blocks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    original = save_tiny("llama", root / "original")
    trimmed = build_tiny("llama")
    drop_blocks(trimmed, [1, 2, 4])
    save_compressed(trimmed, tiny_tokenizer(), root / "half")
    return original, root / "half"


def test_bench_reports_every_model_against_the_first(models, tmp_path):
    original, half = models
    out = tmp_path / "inference.json"
    result = CliRunner().invoke(app, ["bench", str(original), str(half), "--prompt-len", "32", "--new-tokens", "4",
                                      "--repeats", "1", "--batches", "1,2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    ref, row = figures["models"][str(original)], figures["models"][str(half)]
    assert (ref["blocks"], row["blocks"]) == (6, 3)
    assert row["bound"] == pytest.approx(ref["params"] / row["params"], abs=1e-3) and ref["bound"] == 1.0
    assert ref["decode_speedup"] == ref["prefill_speedup"] == ref["memory_ratio"] == 1.0
    for key in ("prefill_b1", "prefill_b2", "decode_b1", "peak_memory_bytes"):
        assert row[key] > 0 and ref[key] > 0, key
    assert row["decode_speedup"] == pytest.approx(row["decode_b1"] / ref["decode_b1"], rel=1e-2)
    assert "speedup / bound" in result.output and f"`{half.name}`" in result.output  # named by its folder


def test_decode_uses_the_kv_cache_and_matches_generate():
    model = build_tiny("llama")
    ids = prompt_ids(model.config.vocab_size, 1, 12, "cpu")
    assert ids.shape == (1, 12) and torch.equal(ids, prompt_ids(model.config.vocab_size, 1, 12, "cpu"))
    prefill(model, ids)
    assert decode(model, ids, 3) > 0
    # the loop decodes what greedy generate decodes
    tokens, out = [], model(input_ids=ids, use_cache=True)
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(3):
        tokens.append(token.item())
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)[0, 12:].tolist()
    assert tokens == generated


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--batches", "1,x"], "expected comma-separated batch sizes"),
    (["--out", "figures.txt"], "--out is a JSON file path"),
])
def test_bench_rejects_bad_options(models, args, message):
    result = CliRunner().invoke(app, ["bench", str(models[0]), *args])
    assert result.exit_code == 2 and message in flat(result.output)


def test_bench_rejects_a_missing_model_before_timing(models, tmp_path):
    result = CliRunner().invoke(app, ["bench", str(models[0]), str(tmp_path / "nope")])
    assert result.exit_code == 2 and "Could not load model" in flat(result.output)
