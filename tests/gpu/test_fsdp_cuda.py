"""FSDP through the Trainer's own option (``train.fsdp``): the stage's trained weights are gathered from the shards
and applied to the full-precision model, so the run ends where a plain run ends. Runs wherever a GPU is present
(CI has none; BENCHMARKS.md says where it ran), with as many processes as there are GPUs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, save_tiny
from tests.integration.test_train import TINY_RUN, run_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

RUN = ["schedule.options.per_stage=1", "stop.target_fraction=0.34", "train.lr=1e-2", "scoring.scorer=block_influence"]


def _weights(directory) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(directory / "model.safetensors").items()}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp_run_applies_the_gathered_weights(tmp_path, method):
    tiny = save_tiny("llama", tmp_path / "tiny")
    run = [*RUN, f"lora.method={method}"]
    single = run_tiny(tiny, tmp_path / "single", *run)
    out = tmp_path / "fsdp"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [torchrun, "--nproc_per_node", str(torch.cuda.device_count()), "--master_port", "29541", "-m", "trimllm",
         "train", str(ROOT / "recipes" / "smoke.yaml"), f"model.name={tiny}", f"output_dir={out}", *TINY_RUN, *run,
         "train.fsdp=full_shard auto_wrap"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    sharded = json.loads((out / "run.json").read_text())
    assert [s["removed"] for s in sharded["stages"]] == [s["removed"] for s in single["stages"]]

    original = _weights(tiny)
    plain, fsdp = _weights(tmp_path / "single" / "final"), _weights(out / "final")
    assert plain.keys() == fsdp.keys()
    removed = set(single["stages"][single["final"]["stage"]]["removed"])
    kept = [i for i in range(single["num_layers"]) if f"block.{i}" not in removed]
    trained = max((plain[k] - original[_original_key(k, kept)]).abs().max().item() for k in plain)
    gap = max((plain[k] - fsdp[k]).abs().max().item() for k in plain)
    assert trained > 1e-3  # training changed the weights (the test would be blind otherwise)
    assert gap < 0.25 * trained, (gap, trained)  # FSDP's merged weights are the plain run's, not the untrained ones


def _original_key(key: str, kept: list[int]) -> str:
    """The original model's name of a weight of the final (renumbered) model."""
    if not key.startswith("model.layers."):
        return key
    position, rest = key.removeprefix("model.layers.").split(".", 1)
    return f"model.layers.{kept[int(position)]}.{rest}"
