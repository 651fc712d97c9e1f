"""Bad input to the deployment commands (`export --gguf`, `eval` / `bench --runtime llamacpp`): one message, exit
code 2, before any conversion, and nothing written."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, save_tiny
from trimllm.gguf import extra_metadata, tooling_dir


@pytest.fixture
def model(tmp_path):
    return save_tiny("llama", tmp_path / "model")


@pytest.mark.parametrize("args,expected", [
    (["--gguf", "{tmp}/out.gguf", "--quant", "q3"], "--quant 'q3' is not one of f16, q8_0, q4_k_m"),
    (["--gguf", "{tmp}/out.bin"], "--gguf is the .gguf file to write"),
    (["--gguf", "{tmp}/dir.gguf"], "is a folder; --gguf names the .gguf file to write"),
])
def test_export_refuses_bad_options(tmp_path, capsys, monkeypatch, model, args, expected):
    args = [a.format(tmp=tmp_path) for a in args]
    (tmp_path / "dir.gguf").mkdir()
    before = sorted(tmp_path.rglob("*"))
    code, output = run_cli(capsys, monkeypatch, "export", model, *args)
    assert code == 2 and expected in output and "Traceback" not in output
    assert sorted(tmp_path.rglob("*")) == before


def test_export_refuses_what_is_not_a_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    code, output = run_cli(capsys, monkeypatch, "export", tmp_path / "empty", "--gguf", tmp_path / "x.gguf")
    assert code == 2 and "is not a model to export" in output and "final/" in output
    assert not (tmp_path / "x.gguf").exists()


def test_export_without_the_converter_says_how_to_install_it(tmp_path, capsys, monkeypatch, model):
    monkeypatch.setenv("TRIMLLM_LLAMA_CPP", str(tmp_path / "nowhere"))
    assert tooling_dir() == tmp_path / "nowhere"
    code, output = run_cli(capsys, monkeypatch, "export", model, "--gguf", tmp_path / "x.gguf")
    assert code == 2 and "converter is not at" in output and "make setup" in output
    assert not (tmp_path / "x.gguf").exists()


def test_a_converter_of_another_release_is_refused(tmp_path, capsys, monkeypatch, model):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "convert_hf_to_gguf.py").write_text("raise SystemExit(1)\n")
    (tools / "VERSION").write_text("0.0.1\n")
    monkeypatch.setenv("TRIMLLM_LLAMA_CPP", str(tools))
    code, output = run_cli(capsys, monkeypatch, "export", model, "--gguf", tmp_path / "x.gguf")
    assert code == 2 and "is from llama-cpp-python 0.0.1" in output


def test_llamacpp_runtime_takes_a_gguf_file(tmp_path, capsys, monkeypatch, model):
    code, output = run_cli(capsys, monkeypatch, "eval", model, "--runtime", "llamacpp", "--tasks", "sciq")
    assert code == 2 and "is not a .gguf file" in output and "trimllm export" in output
    code, output = run_cli(capsys, monkeypatch, "eval", model, "--runtime", "vllm", "--tasks", "sciq")
    assert code == 2 and "expected transformers or llamacpp, got 'vllm'" in output
    code, output = run_cli(capsys, monkeypatch, "bench", model, model, "--runtime", "llamacpp", "--quants", "q3")
    assert code == 2 and "expected GGUF types among f16, q8_0, q4_k_m" in output
    code, output = run_cli(capsys, monkeypatch, "bench", model, tmp_path / "missing.gguf", "--runtime", "llamacpp",
                           "--quants", "f16")
    assert code == 2 and "missing.gguf does not exist" in output


def test_the_pattern_key_is_added_only_for_mixed_attention(tmp_path):
    gemma = save_tiny("gemma3_text", tmp_path / "gemma")
    keys = extra_metadata(gemma, "x")
    assert keys["{arch}.attention.sliding_window_pattern"] == [True, True, False, True, True, False]
    assert "{arch}.attention.sliding_window_pattern" not in extra_metadata(save_tiny("llama", tmp_path / "l"), "x")
