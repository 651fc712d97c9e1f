"""GGUF export for llama.cpp (and Ollama, LM Studio, ... on top of it), built on llama.cpp's own tools.

The conversion is llama.cpp's ``convert_hf_to_gguf.py`` (run as its own process, with the ``gguf-py`` it ships)
and the quantization is llama.cpp's ``llama_model_quantize`` through ``llama-cpp-python``; ``make setup`` builds
that binding from its source package and keeps the converter of the same source beside it
(``$VENV/share/trimllm/llama.cpp``; ``$TRIMLLM_LLAMA_CPP`` points elsewhere). trimllm writes no GGUF itself; it
adds only metadata, with gguf-py's own copy-with-new-metadata function (the ``gguf`` package pinned in
pyproject.toml, the version the converter ships):

- ``{arch}.attention.sliding_window_pattern`` when the model mixes sliding and full attention. The converter does
  not carry ``layer_types`` for Gemma-3, and llama.cpp then assumes "every sixth block is full" — wrong, silently,
  once a block is removed (the RoPE base and the mask of the blocks after it change). llama.cpp's loader reads the
  explicit per-block array first.
- ``trimllm.*`` provenance (base model, kept blocks): it also marks the file as ours, so ``--overwrite`` replaces
  only a GGUF that trimllm wrote.

Whole-block removals are physical in the checkpoint, so the GGUF has fewer blocks; bypassed attention / MLP halves
are zero-weight modules there (see :mod:`trimllm.export`) and stay so: llama.cpp computes them and adds zero.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from trimllm.atomic import die_with_parent, remove_stale_siblings, temp_prefix
from trimllm.errors import ConversionError, ToolingMissing  # noqa: F401  (raised here; re-exported)
from trimllm.layout import RunDir
from trimllm.outputs import OutputError
from trimllm.timing import allowed_cores

logger = logging.getLogger(__name__)

# The llama_ftype of each --quant (llama.h); f16 is the converter's own output type.
QUANTS = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
MARK = "trimllm.version"  # metadata key on every GGUF trimllm writes


def tooling_dir() -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/``."""
    env = os.environ.get("TRIMLLM_LLAMA_CPP")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "trimllm" / "llama.cpp"


def check_tooling() -> str:
    """The llama.cpp version the converter and the binding share; raises :class:`ToolingMissing` otherwise."""
    folder = tooling_dir()
    fix = ("Run `make setup` (it builds llama-cpp-python from source and installs its converter), or set "
           "TRIMLLM_LLAMA_CPP to a llama.cpp checkout whose convert_hf_to_gguf.py matches your llama-cpp-python.")
    try:
        import llama_cpp
    except ImportError:
        raise ToolingMissing(f"GGUF export needs the llama-cpp-python binding, which is not installed. {fix}") from None
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ToolingMissing(f"llama.cpp's converter is not at {folder / 'convert_hf_to_gguf.py'}. {fix}")
    version_file = folder / "VERSION"
    if version_file.is_file() and version_file.read_text().strip() != llama_cpp.__version__:
        raise ToolingMissing(f"the converter in {folder} is from llama-cpp-python {version_file.read_text().strip()}, "
                             f"the installed binding is {llama_cpp.__version__}. {fix}")
    return llama_cpp.__version__


def model_folder(spec: str | Path) -> Path:
    """A checkpoint folder to convert: a trimllm run folder (its ``final/``), an exported model, or a packaged
    model's float checkpoint."""
    from trimllm.modeling import PACKAGED_MODELS, ModelLoadError, convert_packaged

    if str(spec) in PACKAGED_MODELS:
        return convert_packaged(str(spec))
    path = Path(spec).expanduser()
    for folder in (RunDir(path).final, path):
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
    raise ModelLoadError(
        f"{spec} is not a model to export: expected a trimllm run folder (with final/), a model folder with "
        "config.json and *.safetensors (e.g. from `trimllm drop`), or a packaged model name."
    )


def check_target(out: Path, quant: str, overwrite: bool) -> None:
    """Refuse (OutputError) a GGUF target that cannot be written, before any conversion work."""
    if quant not in QUANTS:
        raise OutputError(f"--quant {quant!r} is not one of {', '.join(QUANTS)}")
    if out.suffix != ".gguf":
        raise OutputError(f"--gguf is the .gguf file to write, got {out}")
    if out.is_dir():
        raise OutputError(f"{out} is a folder; --gguf names the .gguf file to write")
    if out.is_symlink():  # os.replace would replace the link, not the file it points to
        raise OutputError(f"{out} is a symbolic link (to {os.readlink(out)}); give the real path, or a new one")
    existing = next(p for p in [out.parent, *out.parent.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{out} cannot be written: no writable folder at {existing}")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists; choose another --gguf, or pass --overwrite to replace a GGUF trimllm wrote")
    if out.exists() and not written_by_trimllm(out):
        raise OutputError(f"{out} exists and was not written by trimllm (no {MARK} metadata); --overwrite replaces "
                          "only trimllm's own GGUF files: choose another --gguf")


def export_gguf(spec: str | Path, out: str | Path, quant: str = "f16", overwrite: bool = False) -> Path:
    """Convert a model to GGUF with llama.cpp's converter, add the metadata above, quantize; write ``out``
    atomically (a failure leaves no partial file)."""
    out = Path(out)
    check_target(out, quant, overwrite)
    version = check_tooling()
    folder = model_folder(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(out)  # a killed export's half-written GGUFs (only trimllm's, only of dead processes)
    with tempfile.TemporaryDirectory(prefix=temp_prefix(out), dir=out.parent) as tmp:
        converted = Path(tmp) / "converted.gguf"
        convert(folder, converted)
        marked = Path(tmp) / "f16.gguf"
        add_metadata(converted, marked, extra_metadata(folder, version))
        converted.unlink()
        final = marked
        if quant != "f16":
            final = Path(tmp) / f"{quant}.gguf"
            quantize(marked, final, quant)
        os.replace(final, out)
    logger.info("Wrote %s (%s, %.1f MB)", out, quant, out.stat().st_size / 1e6)
    return out


def convert(folder: Path, out: Path) -> None:
    """llama.cpp's ``convert_hf_to_gguf.py`` on ``folder`` at f16, in its own process."""
    script = tooling_dir() / "convert_hf_to_gguf.py"
    command = [sys.executable, str(script), str(folder), "--outfile", str(out), "--outtype", "f16"]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=die_with_parent)
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise ConversionError(f"llama.cpp's converter failed on {folder} (exit {done.returncode}):\n{tail}")


def quantize(source: Path, out: Path, quant: str, allow_requantize: bool = False) -> None:
    """llama.cpp's quantizer (``llama_model_quantize``, what ``llama-quantize`` runs) from f16 to ``quant``
    (``allow_requantize``: from an already quantized GGUF, as llama-quantize's --allow-requantize)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = QUANTS[quant], allow_requantize
    params.nthread = allowed_cores()  # the cores this process may use, not the machine's
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0 or not out.is_file():
        raise ConversionError(f"llama.cpp's quantizer failed ({quant}, code {code}) on {source}")


def extra_metadata(folder: Path, version: str) -> dict:
    """The keys trimllm adds: the explicit sliding-window pattern (when the config mixes sliding and full
    attention) and ``trimllm.*`` provenance from ``plan.json`` when the folder is a trimllm export."""
    from importlib.metadata import version as package_version

    config = json.loads((folder / "config.json").read_text())
    keys: dict = {MARK: package_version("trimllm"), "trimllm.llama_cpp_python": version}
    types = config.get("layer_types") or []
    if "sliding_attention" in types and "full_attention" in types:
        keys["{arch}.attention.sliding_window_pattern"] = [t == "sliding_attention" for t in types]
    plan_file = folder / "plan.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        keys["trimllm.base_model"] = str(plan.get("base_model", ""))
        keys["trimllm.kept_blocks"] = [int(i) for i in plan.get("kept", [])]
        keys["trimllm.base_block_count"] = int(plan.get("num_layers", 0))
    return keys


def add_metadata(source: Path, out: Path, keys: dict) -> None:
    """Copy ``source`` to ``out`` with ``keys`` added (``{arch}`` filled in), by gguf-py's own
    ``copy_with_new_metadata`` (the function behind llama.cpp's ``gguf_new_metadata.py``); a key the converter
    already wrote is kept as it is."""
    gguf, new_metadata = _gguf_py()
    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    added = {}
    for key, value in keys.items():
        key = key.format(arch=arch)
        if reader.get_field(key) is None:
            added[key] = new_metadata.MetadataDetails(_value_type(gguf, value), value)
    writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
    new_metadata.copy_with_new_metadata(reader, writer, added, [])


def written_by_trimllm(path: Path) -> bool:
    """Whether ``path`` is a GGUF file carrying trimllm's mark."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            return False
    try:
        return metadata(path).get(MARK) is not None
    except (ValueError, OSError):  # a truncated or foreign file
        return False


def metadata(path: Path) -> dict:
    """The key-value metadata of a GGUF file (tensor data is not read)."""
    gguf, _ = _gguf_py()
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _value_type(gguf, value):
    if isinstance(value, list):
        return gguf.GGUFValueType.ARRAY
    if isinstance(value, bool):
        return gguf.GGUFValueType.BOOL
    return gguf.GGUFValueType.UINT32 if isinstance(value, int) else gguf.GGUFValueType.STRING


def _gguf_py():
    """gguf-py (the ``gguf`` package trimllm pins, the version the converter ships) and its metadata script."""
    import gguf
    from gguf.scripts import gguf_new_metadata

    logging.getLogger("gguf-new-metadata").setLevel(logging.WARNING)
    return gguf, gguf_new_metadata


def cached_gguf(folder: Path, quant: str) -> Path:
    """The GGUF of a model folder at ``quant`` in trimllm's cache (converted on first use; keyed by the folder's
    path and its weights' modification times, so a retrained model is converted again)."""
    import hashlib

    from trimllm.modeling import cache_root

    stamp = [str(Path(folder).resolve())] + [f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*.safetensors"))]
    key = hashlib.sha1("|".join(stamp).encode()).hexdigest()[:12]
    path = cache_root() / "gguf" / f"{folder.name}-{key}-{quant}.gguf"
    if not path.is_file():
        export_gguf(folder, path, quant=quant)
    return path
