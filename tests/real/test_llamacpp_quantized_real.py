"""Real tier: quantized GGUFs run in the installed llama.cpp on this CPU and give an accuracy, not a crash — the
packaged SmolLM2 Q4_1 file as shipped, and trimllm's own `export --quant q4_k_m` of it (the two kinds of file that
segfaulted on their first token under a -march=native build on a VM whose kernel leaves AMX / AVX512-BF16 off)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trimllm.modeling import PACKAGED_MODELS

pytestmark = pytest.mark.real

LIMIT = 40  # SciQ test documents (4 choices: chance is 0.25)
FLOOR = 0.5  # far above chance; measured 2026-12-06 (portable build): Q4_1 0.750, q4_k_m export 0.600 (40 docs)


def packaged_gguf() -> Path:
    entry = PACKAGED_MODELS["smollm2-135m"]
    return Path(importlib.util.find_spec(entry.module).submodule_search_locations[0]) / entry.gguf_file


def sciq_accuracy(gguf: Path, out: Path, capsys, monkeypatch) -> float:
    code, output = run_cli(capsys, monkeypatch, "eval", gguf, "--runtime", "llamacpp", "--tasks", "sciq", "--limit",
                           str(LIMIT), "--out", out)
    assert code == 0, output
    summary = json.loads((out / "results.json").read_text())
    assert summary["n-samples"]["trimllm_sciq"]["effective"] == LIMIT
    return summary["results"]["trimllm_sciq"]["acc,none"]


def test_the_packaged_q4_1_and_a_q4_k_m_export_give_an_accuracy_through_llama_cpp(tmp_path, capsys, monkeypatch):
    q4_k_m = tmp_path / "smollm2-q4_k_m.gguf"
    code, output = run_cli(capsys, monkeypatch, "export", "smollm2-135m", "--gguf", q4_k_m, "--quant", "q4_k_m")
    assert code == 0, output
    shipped = sciq_accuracy(packaged_gguf(), tmp_path / "q4_1", capsys, monkeypatch)
    ours = sciq_accuracy(q4_k_m, tmp_path / "q4_k_m", capsys, monkeypatch)
    assert shipped >= FLOOR and ours >= FLOOR, (shipped, ours)
