"""`trimllm score` on a tiny checkpoint: scores.json schema, ranked table, heatmap; bad input rejected early."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from tests.conftest import flat, save_tiny
from trimllm.cli import app
from trimllm.data import load_side

pytestmark = pytest.mark.integration


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny("llama", tmp_path / "m")


def test_score_writes_json_table_and_heatmap(checkpoint, tmp_path):
    out = tmp_path / "scores"
    result = CliRunner().invoke(app, ["score", str(checkpoint), "--data", "sciq", "--scorer",
                                      "block_influence,task_accuracy,depth", "--granularity", "sublayer",
                                      "--n-calib", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "scores.json").read_text())
    assert set(data) == {"block_influence", "task_accuracy", "depth", "meta"}
    names = [row["candidate"] for row in data["block_influence"]]
    assert sorted(names) == sorted([f"attn.{i}" for i in range(6)] + [f"mlp.{i}" for i in range(6)])
    assert all(isinstance(row["score"], float) for row in data["task_accuracy"])
    assert data["meta"]["scorers"]["task_accuracy"]["direction"] == "higher = more important"
    test_ids = {r["_uid"] for r in load_side("sciq", "test")}
    assert len(data["meta"]["calibration_uids"]) == 4 and not set(data["meta"]["calibration_uids"]) & test_ids
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "scores.md").read_text()
    assert "## task_accuracy" in table and "| 1 |" in table


def test_score_shows_a_progress_bar_per_scorer(checkpoint, tmp_path, capsys):
    from trimllm.modeling import load_model
    from trimllm.scoring import CalibrationSet, run_scorer

    model, tokenizer = load_model(checkpoint)
    calibration = CalibrationSet.from_dataset("sciq", 4)
    run_scorer("block_influence", model, tokenizer, calibration, batch_size=2, progress=True)
    err = capsys.readouterr().err
    counts = re.findall(r"scoring block_influence: (\d+) forward", err)
    assert counts and counts[-1] == "2"  # the bar's last state: 4 examples in batches of 2
    from trimllm.scoring import count_hooks

    assert count_hooks(model) == 0  # the bar's hook is gone
    run_scorer("block_influence", model, tokenizer, calibration, batch_size=2)
    assert "scoring" not in capsys.readouterr().err


def test_score_rejects_unknown_scorer_and_data_before_loading(tmp_path):
    result = CliRunner().invoke(app, ["score", "never-loaded", "--scorer", "block_influnce", "--data", "boolq",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    text = flat(result.output)
    assert "Did you mean 'block_influence'" in text and "no multiple-choice prompt" in text
