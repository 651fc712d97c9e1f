"""Real tier: `trimllm eval` gives exactly plain lm-eval's numbers on the packaged SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from trimllm.modeling import resolve_checkpoint

pytestmark = pytest.mark.real


def test_trimllm_eval_equals_plain_lm_eval_on_sciq(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ours = tmp_path / "ours"
    subprocess.run(
        [sys.executable, "-m", "trimllm", "eval", "smollm2-135m", "--tasks", "sciq", "--limit", "200",
         "--batch-size", "8", "--out", str(ours)],
        check=True, env=env,
    )
    converted = resolve_checkpoint("smollm2-135m")
    plain = tmp_path / "plain"
    # Run from an unrelated directory: the task files must not depend on the working directory.
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={converted}",
         "--include_path", str(ROOT / "eval" / "tasks"), "--tasks", "trimllm_sciq", "--limit", "200",
         "--batch_size", "8", "--device", "cpu", "--output_path", str(plain)],
        check=True, env=env, cwd=tmp_path,
    )
    ours_acc = json.loads((ours / "results.json").read_text())["results"]["trimllm_sciq"]
    plain_file = next(plain.rglob("results_*.json"))
    plain_acc = json.loads(plain_file.read_text())["results"]["trimllm_sciq"]
    assert ours_acc["acc,none"] == plain_acc["acc,none"]
    assert ours_acc["acc_norm,none"] == plain_acc["acc_norm,none"]
    assert ours_acc["acc,none"] > 0.6  # chance is 0.25
