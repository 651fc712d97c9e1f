"""GGUF export through llama.cpp's own converter and quantizer, checked by llama.cpp itself (llama-cpp-python)
against plain transformers on tiny random models of several families with blocks removed or halves bypassed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import run_cli, tiny_config
from trimllm.export import save_compressed
from trimllm.gguf import convert, metadata
from trimllm.llamacpp import LlamaCppLM, gguf_params, greedy, open_gguf
from trimllm.modeling import convert_packaged
from trimllm.surgery import bypass_attention, bypass_mlp, drop_blocks

pytestmark = pytest.mark.integration

TEXT = "The quick brown fox jumps over the lazy dog because it wants to reach the river before the sun sets."
F16_TOLERANCE = 0.1  # max |log p| difference, f16 GGUF against float32 transformers (measured <= 0.07)


@pytest.fixture(scope="module")
def tokenizer():
    # llama.cpp's converter accepts only tokenizers it recognises; SmolLM2's (the packaged model's) is one.
    return AutoTokenizer.from_pretrained(convert_packaged("smollm2-135m"))


def tiny_model(model_type: str, tokenizer):
    """A 6-block random model of ``model_type`` with SmolLM2's vocabulary, weights perturbed enough that every
    block and branch changes the logits (std 0.3)."""
    config = tiny_config(model_type)
    config.vocab_size = len(tokenizer)
    if model_type == "qwen3":  # llama.cpp's Qwen3 has no sliding window (real Qwen3 configs use none either)
        config.use_sliding_window, config.layer_types = False, ["full_attention"] * config.num_hidden_layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return model


def reference_logprobs(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy()


def llama_logprobs(path: Path, ids: list[int]) -> np.ndarray:
    llm = open_gguf(path, n_ctx=64, logits_all=True)
    llm.eval(ids)
    logits = llm.scores[: len(ids)].astype(np.float64)
    llm.close()
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def export(capsys, monkeypatch, folder: Path, out: Path, *extra) -> None:
    code, output = run_cli(capsys, monkeypatch, "export", folder, "--gguf", out, *extra)
    assert code == 0, output


@pytest.mark.parametrize("model_type,edit", [
    ("llama", {"drop": [2]}), ("mistral", {"drop": [3]}), ("qwen3", {"drop": [1]}),
    ("gemma3_text", {"drop": [2]}),  # block 2 is a full-attention block: the sliding / full pattern shifts
    ("llama", {"attention": [1], "mlp": [3]}),  # bypassed halves: zero-weight modules in the checkpoint
])
def test_llama_cpp_runs_the_export_as_transformers_does(tmp_path, capsys, monkeypatch, tokenizer, model_type, edit):
    model = tiny_model(model_type, tokenizer)
    bypass_attention(model, edit.get("attention", []))
    bypass_mlp(model, edit.get("mlp", []))
    drop_blocks(model, edit.get("drop", []))
    save_compressed(model, tokenizer, tmp_path / "model")
    export(capsys, monkeypatch, tmp_path / "model", tmp_path / "model.gguf")
    ids = tokenizer(TEXT)["input_ids"]
    ref, got = reference_logprobs(model, ids), llama_logprobs(tmp_path / "model.gguf", ids)
    assert np.abs(got - ref).max() < F16_TOLERANCE
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    meta = metadata(tmp_path / "model.gguf")
    assert meta["trimllm.kept_blocks"] == [i for i in range(6) if i not in edit.get("drop", [])]
    assert meta["general.file_type"] == 1  # f16
    saved = load_file(tmp_path / "model" / "model.safetensors")  # bypassed halves are zero tensors there
    assert gguf_params(tmp_path / "model.gguf") == sum(t.numel() for t in saved.values())


def test_the_converter_alone_gets_a_trimmed_gemma_wrong_and_the_explicit_pattern_fixes_it(tmp_path, capsys,
                                                                                      monkeypatch, tokenizer):
    model = tiny_model("gemma3_text", tokenizer)
    drop_blocks(model, [2])
    save_compressed(model, tokenizer, tmp_path / "model")
    export(capsys, monkeypatch, tmp_path / "model", tmp_path / "ours.gguf")
    convert(tmp_path / "model", tmp_path / "plain.gguf")  # llama.cpp's converter, nothing added
    ids = tokenizer(TEXT)["input_ids"]
    assert len(ids) > model.config.sliding_window  # the masks differ too, not only the RoPE bases
    ref = reference_logprobs(model, ids)
    assert np.abs(llama_logprobs(tmp_path / "plain.gguf", ids) - ref).max() > 1.0  # silently wrong
    assert np.abs(llama_logprobs(tmp_path / "ours.gguf", ids) - ref).max() < F16_TOLERANCE
    pattern = metadata(tmp_path / "ours.gguf")["gemma3.attention.sliding_window_pattern"]
    assert pattern == [t == "sliding_attention" for t in model.config.layer_types] == [True, True, True, True, False]
    assert "gemma3.attention.sliding_window_pattern" not in metadata(tmp_path / "plain.gguf")


def test_quantized_exports_are_llama_cpp_types_and_keep_the_metadata(tmp_path, capsys, monkeypatch, tokenizer):
    model = tiny_model("gemma3_text", tokenizer)
    drop_blocks(model, [2])
    save_compressed(model, tokenizer, tmp_path / "model")
    sizes = {}
    for quant, file_type in (("f16", 1), ("q8_0", 7), ("q4_k_m", 15)):
        out = tmp_path / f"{quant}.gguf"
        export(capsys, monkeypatch, tmp_path / "model", out, "--quant", quant)
        meta = metadata(out)
        assert meta["general.file_type"] == file_type
        assert meta["gemma3.attention.sliding_window_pattern"] == [True, True, True, True, False]
        assert meta["gemma3.block_count"] == 5
        sizes[quant] = out.stat().st_size
        ids = tokenizer(TEXT)["input_ids"]
        assert np.isfinite(llama_logprobs(out, ids)).all()  # llama.cpp loads and runs it
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]


def test_export_refuses_to_replace_a_file_it_did_not_write_and_leaves_nothing_on_failure(tmp_path, capsys,
                                                                                     monkeypatch, tokenizer):
    model = tiny_model("llama", tokenizer)
    save_compressed(model, tokenizer, tmp_path / "model")
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"GGUF not really")
    code, output = run_cli(capsys, monkeypatch, "export", tmp_path / "model", "--gguf", foreign, "--overwrite")
    assert code == 2 and "was not written by trimllm" in output and "Traceback" not in output
    assert foreign.read_bytes() == b"GGUF not really"
    ours = tmp_path / "ours.gguf"
    export(capsys, monkeypatch, tmp_path / "model", ours)
    code, output = run_cli(capsys, monkeypatch, "export", tmp_path / "model", "--gguf", ours)
    assert code == 2 and "exists" in output and "--overwrite" in output
    export(capsys, monkeypatch, tmp_path / "model", ours, "--quant", "q8_0", "--overwrite")
    assert metadata(ours)["general.file_type"] == 7
    # Phi-3's converter needs the model's sentencepiece tokenizer.model: a converter failure, reported in one
    # message, with no partial file or temporary folder left behind.
    phi = tiny_model("phi3", tokenizer)
    save_compressed(phi, tokenizer, tmp_path / "phi")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, output = run_cli(capsys, monkeypatch, "export", tmp_path / "phi", "--gguf", tmp_path / "phi.gguf")
    assert code == 2 and "llama.cpp's converter failed" in output and "tokenizer.model" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_loglikelihoods_are_the_bindings_own_and_lm_eval_runs_on_them(tmp_path, capsys, monkeypatch, tokenizer):
    model = tiny_model("llama", tokenizer)
    drop_blocks(model, [4])
    save_compressed(model, tokenizer, tmp_path / "model")
    export(capsys, monkeypatch, tmp_path / "model", tmp_path / "model.gguf")
    lm = LlamaCppLM(tmp_path / "model.gguf")
    context, continuation = "Question: is the sky blue?\nAnswer:", " yes, it is"
    context_ids, continuation_ids = lm.encode_pair(context, continuation)
    ours, _ = lm.score(context_ids, continuation_ids)
    # By hand from llama.cpp's logits of the whole sequence: the row before each continuation token predicts it.
    # (llama-cpp-python's own echo log-probabilities pair each token with the row after it, which is why
    # trimllm scores from the logits instead of through the binding's server and lm-eval's `gguf` model.)
    ids = context_ids + continuation_ids
    lm.llm.reset()
    lm.llm.eval(ids)
    logits = lm.llm.scores[: len(ids)].astype(np.float64)
    logprobs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    assert ours == pytest.approx(sum(logprobs[j - 1, ids[j]] for j in range(len(context_ids), len(ids))), abs=1e-6)
    # Scoring again after another request reuses the KV cache for the shared prefix: same value
    lm.score(context_ids, lm.encode(" no"))
    assert lm.score(context_ids, continuation_ids)[0] == pytest.approx(ours, abs=1e-4)
    # generation: lm-eval's generate_until is llama.cpp's greedy continuation, cut at the stop string
    request = SimpleNamespace(args=(context, {"until": ["\n"], "max_gen_toks": 8}))
    (text,) = lm.generate_until([request])
    tokens, _ = greedy(lm.llm, lm.llm.tokenize(context.encode(), special=True), 8)
    tokens = tokens[: tokens.index(lm.llm.token_eos())] if lm.llm.token_eos() in tokens else tokens
    assert text == lm.llm.detokenize(tokens).decode("utf-8", errors="ignore").split("\n")[0]
    # lm-eval's per-document log-likelihoods through llama.cpp equal those through transformers (f16 tolerance)
    code, output = run_cli(capsys, monkeypatch, "eval", tmp_path / "model.gguf", "--runtime", "llamacpp", "--tasks",
                           "sciq", "--limit", "6", "--out", tmp_path / "llama", "--log-samples")
    assert code == 0, output
    code, output = run_cli(capsys, monkeypatch, "eval", tmp_path / "model", "--tasks", "sciq", "--limit", "6",
                           "--out", tmp_path / "hf", "--log-samples")
    assert code == 0, output
    scores = [_loglikelihoods(tmp_path / side) for side in ("llama", "hf")]
    assert len(scores[0]) == 24 and np.abs(np.array(scores[0]) - np.array(scores[1])).max() < F16_TOLERANCE


def _loglikelihoods(folder: Path) -> list[float]:
    samples = next(folder.glob("samples_*.jsonl"))
    return [resp[0] for line in samples.read_text().splitlines()
            for resp in json.loads(line)["filtered_resps"]]


def test_bench_llamacpp_runs_every_model_at_every_type(tmp_path, capsys, monkeypatch, tokenizer):
    model = tiny_model("llama", tokenizer)
    save_compressed(model, tokenizer, tmp_path / "original")
    drop_blocks(model, [1, 2, 4])
    save_compressed(model, tokenizer, tmp_path / "half")
    out = tmp_path / "bench.json"
    code, output = run_cli(capsys, monkeypatch, "bench", tmp_path / "original", tmp_path / "half", "--runtime",
                           "llamacpp", "--quants", "f16,q8_0", "--prompt-len", "16", "--new-tokens", "4",
                           "--repeats", "1", "--out", out)
    assert code == 0, output
    rows = json.loads(out.read_text())["models"]
    assert list(rows) == ["original f16", "original q8_0", "half f16", "half q8_0"]
    ref, half = rows["original f16"], rows["half f16"]
    assert half["bound"] == pytest.approx(ref["params"] / half["params"], abs=1e-3) and ref["bound"] == 1.0
    assert rows["original q8_0"]["file_bytes"] < ref["file_bytes"] and half["file_bytes"] < ref["file_bytes"]
    for row in rows.values():
        assert row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0 and row["peak_memory_bytes"] > 0
