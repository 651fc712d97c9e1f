"""`torchrun --nproc_per_node 2` on CPU (gloo) makes the same surgery decisions as one process, and only rank 0
writes files and prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, save_tiny
from tests.integration.test_train import TINY_RUN, run_tiny

pytestmark = pytest.mark.integration

RUN = ["schedule.options.per_stage=1", "stop.target_fraction=0.34", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("tiny") / "qwen2")


@pytest.mark.parametrize("extra, port", [([], 29533), (["distill={}", "distill.alpha=0.5"], 29534)],
                         ids=["plain", "distill"])
def test_two_process_gloo_run_matches_one_process(tiny_dir, tmp_path, extra, port):
    single = run_tiny(tiny_dir, tmp_path / "single", *RUN, *extra)
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "trimllm", "train",
         str(ROOT / "recipes" / "smoke.yaml"), f"model.name={tiny_dir}", f"output_dir={out}", *TINY_RUN, *RUN, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("[2 processes] stage 0:") == 1  # the per-stage summary comes from rank 0 only
    assert result.stdout.count("== trimllm run finished ==") == 1  # the summary too
    ddp = json.loads((out / "run.json").read_text())
    assert [s["removed"] for s in ddp["stages"]] == [s["removed"] for s in single["stages"]]
    assert ddp["final"]["stage"] == single["final"]["stage"]
    for a, b in zip(ddp["stages"], single["stages"], strict=True):
        # 2 x 2 examples per step vs 1 x 4: the same samples, gradients equal up to summation order
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-9)
        assert a["scores"].keys() == b["scores"].keys()
        assert all(a["scores"][k] == pytest.approx(b["scores"][k], rel=1e-3, abs=1e-5) for k in a["scores"])
    losses = lambda path: [m["loss"] for m in map(json.loads, path.read_text().splitlines()) if "loss" in m]  # noqa: E731
    assert losses(out / "metrics.jsonl") == pytest.approx(losses(tmp_path / "single" / "metrics.jsonl"), rel=1e-3)
