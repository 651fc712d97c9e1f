"""The llama.cpp runtime check: a build that crashes on this CPU is found in a child process and reported as one
message (exit 2) naming the signal, the build's CPU features and the rebuild command, never as a segfault of the
caller; and the installed build (what `make setup` made) uses no CPU feature the kernel leaves off."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tests.conftest import run_cli
from trimllm import llamacpp_check
from trimllm.llamacpp_check import CHECKED_ENV, LlamaCppCrash, build_features, ensure_runnable, kernel_flags

SYSTEM_INFO = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | "


def tiny_gguf(path, dtype=np.float32):
    """A GGUF holding two tensors (enough for the check's tensor-type key; llama.cpp is never asked to load it)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("a", np.ones((4, 32), dtype=dtype))
    writer.add_tensor("b", np.ones((32,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def child(monkeypatch, code: str) -> None:
    """Make the check's probe run ``code`` in a fresh interpreter instead of loading the GGUF."""
    monkeypatch.setattr(llamacpp_check, "probe_command", lambda path: [sys.executable, "-c", code])
    monkeypatch.delenv(CHECKED_ENV, raising=False)


SEGFAULT = f"import os, signal; print({SYSTEM_INFO!r}, flush=True); os.kill(os.getpid(), signal.SIGSEGV)"


def test_a_child_killed_by_a_signal_is_one_message_with_the_fix_and_exit_2(tmp_path, capsys, monkeypatch):
    model = tiny_gguf(tmp_path / "model.gguf")
    child(monkeypatch, SEGFAULT)
    monkeypatch.setattr(llamacpp_check, "kernel_flags", lambda: {"pni", "ssse3", "avx", "avx2", "f16c", "fma"})
    code, output = run_cli(capsys, monkeypatch, "eval", model, "--runtime", "llamacpp", "--tasks", "sciq",
                           "--limit", "2")
    assert code == 2, output
    assert "Traceback" not in output
    assert "llama.cpp cannot run model.gguf on this CPU" in output
    assert "killed by SIGSEGV (signal 11)" in output
    assert "built for SSE3, SSSE3, AVX, AVX2, F16C, FMA, AVX512_BF16, AMX_INT8" in output
    assert "does not enable AVX512_BF16, AMX_INT8" in output  # what the build used that the kernel leaves off
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in output and "--no-cache-dir" in output  # the rebuild command
    assert CHECKED_ENV not in os.environ  # nothing was marked as verified


def test_the_bench_stops_on_the_same_message_before_timing_anything(tmp_path, capsys, monkeypatch):
    model = tiny_gguf(tmp_path / "model.gguf")
    child(monkeypatch, SEGFAULT)
    code, output = run_cli(capsys, monkeypatch, "bench", model, "--runtime", "llamacpp", "--repeats", "1")
    assert code == 2 and "killed by SIGSEGV" in output and "round" not in output, output


def test_a_hanging_child_is_reported_not_waited_on_forever(tmp_path, monkeypatch):
    child(monkeypatch, "import time; time.sleep(30)")
    monkeypatch.setattr(llamacpp_check, "PROBE_TIMEOUT_S", 1)
    with pytest.raises(LlamaCppCrash, match="did not finish in 1 s"):
        ensure_runnable(tiny_gguf(tmp_path / "model.gguf"))


def test_a_passing_check_runs_once_per_tensor_types_and_is_inherited_by_children(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    child(monkeypatch, f"open({str(runs)!r}, 'a').write('x')")
    first, same_types = tiny_gguf(tmp_path / "a.gguf"), tiny_gguf(tmp_path / "b.gguf")
    other_types = tiny_gguf(tmp_path / "c.gguf", dtype=np.float16)
    ensure_runnable(first)
    ensure_runnable(same_types)  # the same kernels: not probed again
    assert runs.read_text() == "x"
    ensure_runnable(other_types)
    assert runs.read_text() == "xx"
    assert os.environ[CHECKED_ENV] == "F16,F32;F32"  # what a child process (bench's memory probe) inherits


def test_a_child_that_fails_with_an_error_is_left_to_the_real_load(tmp_path, monkeypatch):
    # A file llama.cpp cannot load exits 1 in the child: not a CPU crash; open_gguf's own load says what is wrong.
    child(monkeypatch, "raise SystemExit(1)")
    ensure_runnable(tiny_gguf(tmp_path / "model.gguf"))
    assert CHECKED_ENV not in os.environ


def test_build_features_parse_the_system_info_line():
    assert build_features(SYSTEM_INFO) == ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "AVX512_BF16", "AMX_INT8"]
    assert build_features("CPU : AVX = 1 | AVX2 = 0 | LLAMAFILE = 1 | ") == ["AVX"]


def test_the_installed_build_uses_no_cpu_feature_the_kernel_leaves_off():
    # What `make setup` built: a portable baseline, so every feature it compiled in is one this kernel enables.
    import llama_cpp

    flags = kernel_flags()
    assert flags is not None, "this test needs /proc/cpuinfo (Linux)"
    features = build_features(llama_cpp.llama_print_system_info().decode())
    assert features, "llama_print_system_info named no CPU feature"
    assert [f for f in features if llamacpp_check.CPUINFO_FLAGS[f] not in flags] == []
    assert "AMX_INT8" not in features and "AVX512_BF16" not in features  # the portable baseline has neither
