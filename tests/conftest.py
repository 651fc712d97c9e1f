"""Shared fixtures: tiny random models of every supported family, built once per session from configs."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Keep caches inside the checkout (the Makefile sets the same; this covers a bare `pytest`).
os.environ.setdefault("TRIMLLM_CACHE", str(ROOT / ".cache" / "trimllm"))
os.environ.setdefault("HF_HOME", str(ROOT / ".cache" / "trimllm" / "huggingface"))
sys.path.insert(0, str(ROOT / "scripts"))  # the benchmark scripts import their shared helper as `_common`

import torch  # noqa: E402

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, num_hidden_layers=6, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(model_type: str):
    """A 6-block config of ``model_type`` small enough for CPU unit tests.

    Sliding-window families get a window shorter than the test sequences and a mix of layer types, so that
    slicing ``layer_types`` / remapping ``max_window_layers`` and the sliding KV cache are all exercised.
    """
    from transformers import AutoConfig

    extra: dict = {}
    if model_type in ("qwen2", "qwen3"):
        extra = dict(use_sliding_window=True, sliding_window=6, max_window_layers=3)
    if model_type == "qwen3":
        extra["head_dim"] = 8
    if model_type == "mistral":
        extra = dict(sliding_window=None)
    if model_type == "gemma3_text":
        layer_types = ["sliding_attention", "sliding_attention", "full_attention"] * 2
        extra = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=6, layer_types=layer_types)
    config = AutoConfig.for_model(model_type, **TINY, **extra)
    return config


ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3"]

_CACHE: dict = {}


def build_tiny(model_type: str):
    """A fresh copy of the seeded tiny model of ``model_type`` (built once per session)."""
    if model_type not in _CACHE:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
        # Random init leaves norms at their neutral values; perturb everything so every branch matters.
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        _CACHE[model_type] = model.eval()
    return copy.deepcopy(_CACHE[model_type])


def tiny_tokenizer():
    """A character-level fast tokenizer whose 96 ids match the tiny models' vocabulary."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = string.ascii_letters + string.digits + " .,:;?!'()-+*/=%$\n"
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for char in chars[: TINY["vocab_size"] - len(vocab)]:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(params=ARCHS)
def tiny(request):
    return build_tiny(request.param)


@pytest.fixture
def input_ids():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, 96, (2, 12), generator=generator)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def flat(text: str) -> str:
    """CLI output with typer's error-box borders removed and whitespace collapsed (boxes wrap long messages)."""
    for char in "│╭╮╰╯─":
        text = text.replace(char, " ")
    return " ".join(text.split())


def save_tiny(model_type: str, path):
    """Save the tiny model of ``model_type`` with the tiny tokenizer as a checkpoint directory; returns ``path``."""
    build_tiny(model_type).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def run_cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    """Run ``trimllm ARGS`` through its console entry point (``trimllm.cli.main``, which turns user errors into one
    message); returns (exit code, stdout + stderr flattened as by :func:`flat`)."""
    from trimllm import cli

    monkeypatch.setattr(sys, "argv", ["trimllm", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr()
    return exit_info.value.code or 0, flat(out.out + out.err)
