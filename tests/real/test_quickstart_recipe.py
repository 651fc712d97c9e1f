"""Real tier: the README's main job, `trimllm train recipes/quickstart.yaml` (oneshot), on the packaged
SmolLM2-135M and bundled SciQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.real


def test_quickstart_recipe_end_to_end(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "trimllm", "train", str(ROOT / "recipes" / "quickstart.yaml"),
                    f"output_dir={out}"], check=True, env=env)
    plan = json.loads((out / "run.json").read_text())
    assert [s["blocks_kept"] for s in plan["stages"]] == [26]  # 4 blocks removed at once, then trained
    assert len(plan["stages"][0]["dropped"]) == 4 and plan["stages"][0]["steps"] == 6
    assert plan["final"]["stage"] == 0
    assert all(0 <= s["val_acc"] <= 1 for s in plan["stages"])
    check = ("import sys; from transformers import AutoModelForCausalLM as M;"
             "print(M.from_pretrained(sys.argv[1]).config.num_hidden_layers)")
    layers = subprocess.run([sys.executable, "-c", check, out / "final"], capture_output=True, text=True, check=True)
    assert layers.stdout.strip() == "26"
    for name in ("report.md", "loss.png", "accuracy.png", "metrics.jsonl", "resolved.yaml", "final/README.md"):
        assert (out / name).is_file()
