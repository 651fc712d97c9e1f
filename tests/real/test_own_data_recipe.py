"""Real tier: a shipped own-data recipe (the completion one on TAT-QA, flattened by its process_docs) end to end on
the packaged SmolLM2-135M, a few steps, evaluated through the lm-eval task the run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.real


def test_tatqa_completion_recipe_end_to_end(tmp_path):
    out = tmp_path / "tatqa"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "trimllm", "train", str(ROOT / "recipes" / "own_data" / "tatqa_completion.yaml"),
                    f"output_dir={out}", "data.n_train=16", "data.n_validation=16", "data.n_calibration=8",
                    "data.max_length=384", "train.batch_size=4", "train.steps_per_stage=3", "eval.limit=8"],
                   check=True, env=env, cwd=ROOT)
    plan = json.loads((out / "run.json").read_text())
    assert [s["blocks_kept"] for s in plan["stages"]] == [22]  # oneshot: 8 of SmolLM2's 30 blocks (a quarter, rounded up)
    # token probability of the answers: a 135M model gives TAT-QA's answers a small but non-zero probability
    assert 0.001 < plan["stages"][0]["val_acc"] < 0.9
    results = json.loads((out / "final_eval" / "results.json").read_text())
    assert results["n-samples"]["tatqa"]["effective"] == 8
    assert results["results"]["tatqa"]["perplexity,none"] > 1
    assert "Question:" in (out / "tasks" / "tatqa.yaml").read_text()
