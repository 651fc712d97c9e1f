"""A model folder that can prove it loads right: the log-probabilities the model had in memory when trimllm saved
it, on a fixed text, kept beside the weights (``trimllm_check.safetensors``), and the checks that reload the folder
elsewhere and compare.

Why beside the weights: a structural edit that the saved config does not carry (a ``layer_types`` entry left
unsliced, a ``layer_idx`` not renumbered) still computes right in memory, where every layer keeps what it was built
with, and goes wrong only when the folder is loaded again. Comparing two loads of the folder cannot see that; a
record of the model trimllm trained and measured can. :func:`transformers_check` reloads the folder in a fresh
process with plain ``transformers`` (trimllm is not imported there); :func:`gguf_check` runs the same text through
llama.cpp on a GGUF converted from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHECK_FILE = "trimllm_check.safetensors"
TOP_K = 16  # log-probabilities kept per position: the model's own 16 likeliest tokens
LENGTH = 32  # tokens of the check text
TEXT = ("Photosynthesis converts light energy into chemical energy. The mitochondria release it again. "
        "Interest rates rose, and the company's shares fell by three percent after the report.")
# How far a reload may differ, in nats, at the recorded tokens: float32 and the same kernels give ~1e-6; a cast to
# 16 bits moves each weight by up to 2^-9 (float16) or 2^-8 (bfloat16). llama.cpp at f16 measured <= 0.04 on
# SmolLM2 (tests/real/test_gguf_real.py; the quick start's compress: max 0.029). Quantized types are judged on the
# mean, which a wrong structure moves by whole nats: SmolLM2 at q4_k_m measured a mean of 0.35 (max 2.4), hence
# twice that as the limit.
TOLERANCE = {"float32": 2e-3, "float16": 0.1, "bfloat16": 0.25, "f16": 0.1}
MEAN_TOLERANCE = {"q8_0": 0.3, "q4_k_m": 0.75}


@dataclass(frozen=True)
class CheckResult:
    """One comparison: where, the largest and the mean difference (nats) at the recorded tokens, and the limit."""

    runtime: str
    max_diff: float
    mean_diff: float
    limit: float
    on: str  # "max" or "mean": which figure the limit applies to

    @property
    def ok(self) -> bool:
        return (self.max_diff if self.on == "max" else self.mean_diff) <= self.limit

    def line(self) -> str:
        verdict = "same" if self.ok else "DIFFERENT"
        return (f"{self.runtime}: {verdict} log-probabilities (max {self.max_diff:.2g}, mean {self.mean_diff:.2g} "
                f"nats; limit {self.limit:g} on the {self.on})")


def check_ids(tokenizer) -> torch.Tensor:
    """The check text's first :data:`LENGTH` token ids, shape (1, LENGTH) (repeated when the tokenizer is coarse)."""
    ids = tokenizer(TEXT)["input_ids"]
    ids = (ids * (LENGTH // max(len(ids), 1) + 1))[:LENGTH]
    return torch.tensor([ids])


@torch.no_grad()
def record(model: nn.Module, tokenizer) -> dict[str, torch.Tensor]:
    """The tensors of a check: the ids, and per position the model's top-k token ids and their log-probabilities."""
    ids = check_ids(tokenizer).to(next(model.parameters()).device)
    training = model.training
    model.eval()  # no dropout: the function the folder must reproduce
    try:
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    finally:
        model.train(training)
    top = logprobs.topk(TOP_K, dim=-1)
    return {"input_ids": ids[0].cpu(), "top_ids": top.indices.cpu(), "top_logprobs": top.values.cpu()}


def save(model: nn.Module, tokenizer, folder: Path) -> None:
    """Write the check of ``model`` (as it is in memory) into ``folder``."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in record(model, tokenizer).items()}, str(folder / CHECK_FILE),
              metadata={"dtype": str(next(model.parameters()).dtype).removeprefix("torch.")})


def load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder) / CHECK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CHECK_FILE}: it was not saved by this trimllm")
    return load_file(str(path))


def compare(expected: dict, logprobs: np.ndarray, runtime: str, limit: float, on: str = "max") -> CheckResult:
    """``logprobs`` (positions x vocabulary) at the recorded top-k tokens against the recorded values."""
    got = np.take_along_axis(np.asarray(logprobs, dtype=np.float64), expected["top_ids"].numpy(), axis=-1)
    diff = np.abs(got - expected["top_logprobs"].double().numpy())
    return CheckResult(runtime, float(diff.max()), float(diff.mean()), limit, on)


# The fresh process: torch, transformers and safetensors only. It reports whether anything imported trimllm.
CHILD = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
check = load_file(folder + "/trimllm_check.safetensors")
model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", trust_remote_code=False).eval()
with torch.no_grad():
    logprobs = torch.log_softmax(model(input_ids=check["input_ids"][None]).logits[0].float(), -1)
got = logprobs.gather(-1, check["top_ids"]).double()
diff = (got - check["top_logprobs"].double()).abs()
print(json.dumps({"max": diff.max().item(), "mean": diff.mean().item(), "dtype": str(model.dtype),
                  "trimllm": any(name.split(".")[0] == "trimllm" for name in sys.modules)}))
"""


def transformers_check(folder: Path) -> CheckResult:
    """Reload ``folder`` with plain ``transformers`` in a fresh process and compare with its recorded check.

    Raises:
        RuntimeError: the child process failed (its error output is in the message).
    """
    load(folder)  # a folder without a check fails here, with its own message
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"plain transformers could not load and run {folder}:\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not figures["trimllm"], "the plain-transformers check imported trimllm"
    dtype = figures["dtype"].removeprefix("torch.")
    return CheckResult("transformers (fresh process)", figures["max"], figures["mean"], TOLERANCE.get(dtype, 0.25),
                       "max")


def gguf_check(folder: Path, gguf: Path, quant: str) -> CheckResult:
    """The recorded check text through llama.cpp on ``gguf`` (converted from ``folder`` at ``quant``)."""
    from trimllm.llamacpp import open_gguf

    expected = load(folder)
    llm = open_gguf(gguf, n_ctx=max(64, LENGTH), logits_all=True)
    try:
        llm.reset()
        llm.eval(expected["input_ids"].tolist())
        logits = np.asarray(llm.scores[:LENGTH], dtype=np.float64)
    finally:
        llm.close()
    logprobs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    if quant in MEAN_TOLERANCE:
        return compare(expected, logprobs, f"llama.cpp {quant}", MEAN_TOLERANCE[quant], "mean")
    return compare(expected, logprobs, f"llama.cpp {quant}", TOLERANCE["f16"], "max")
