"""Real tier: `trimllm compress` on the packaged SmolLM2-135M and bundled SciQ with a small budget, end to end
through llama.cpp: the choice, the verification, the plain-transformers reload, the GGUF log-probabilities, the
test side through llama.cpp and the speed table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from trimllm.gguf import metadata

pytestmark = pytest.mark.real

SMALL = ["data.n_train=32", "data.n_validation=16", "train.steps_per_stage=2", "compress.step=6",
         "compress.max_fraction=0.45", "compress.probes=1", "compress.probe_fraction=0.5", "compress.verify_items=40",
         "compress.test_limit=20"]


def test_compress_smollm2_through_llamacpp(tmp_path):
    out = tmp_path / "job"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "trimllm", "compress", str(ROOT / "recipes" / "quickstart.yaml"),
                           f"output_dir={out}", *SMALL, "--tolerance", "100", "--quant", "q4_k_m"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "compress.json").read_text())
    assert state["depths"] == [6, 12] and state["choice"]["removed"] == 12  # within 100 points: the deepest
    assert "12 of 30 blocks removed, verified within 100.0 points" in done.stdout
    checks = {c["runtime"]: c for c in state["proof"]["checks"]}
    assert set(checks) == {"transformers (fresh process)", "llama.cpp f16", "llama.cpp q4_k_m"}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["llama.cpp f16"]["max_diff"] < 0.1  # the f16 GGUF runs the model trimllm healed
    assert metadata(out / "deploy" / "removed_12-f16.gguf")["llama.block_count"] == 18
    test = state["proof"]["test"]
    assert test["compressed"]["n"] == test["original"]["n"] == 20 and 0 <= test["compressed"]["value"] <= 1
    speed = state["proof"]["speed"]["models"]
    assert list(speed) == ["original f16", "original q4_k_m", "compressed f16", "compressed q4_k_m"]
    assert 1.4 < speed["compressed f16"]["bound"] < 1.5  # 18 of 30 blocks; the tied embedding stays
    report = (out / "compress.md").read_text()
    assert "Deployment proof" in report and "decode tok/s" in report and (out / "compress.png").is_file()
