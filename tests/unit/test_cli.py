"""`trimllm info` and `trimllm drop` on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import flat, save_tiny
from trimllm.cli import app
from trimllm.modeling import load_model


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny("gemma3_text", tmp_path / "base")


def test_info_lists_family_blocks_and_layer_types(checkpoint):
    result = CliRunner().invoke(app, ["info", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert "gemma3_text" in result.output and "blocks:      6 of 6" in result.output
    assert result.output.count("full_attention") == 2 and result.output.count("sliding_attention") == 4


def test_drop_exports_and_reports(checkpoint, tmp_path):
    out = tmp_path / "small"
    result = CliRunner().invoke(app, ["drop", str(checkpoint), "--blocks", "2,3", "--mlp", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "blocks:      4 of 6" in result.output
    plan = json.loads((out / "plan.json").read_text())
    assert plan["modules"]["dropped"] == ["block.2", "block.3", "mlp.5"]
    model, _ = load_model(out, device="cpu")
    assert model.config.num_hidden_layers == 4
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--blocks", "2,x"], "comma-separated block indices"),
        (["--blocks", "17"], "out of range"),
        ([], "nothing to remove"),
    ],
)
def test_drop_rejects_bad_input_with_one_message(checkpoint, tmp_path, args, message):
    result = CliRunner().invoke(app, ["drop", str(checkpoint), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in flat(result.output)
    assert not (tmp_path / "o").exists()


def test_drop_refuses_a_non_empty_out_before_loading(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    result = CliRunner().invoke(app, ["drop", "does-not-matter", "--blocks", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_help_texts_list_the_registries_and_say_what_is_deleted():
    from trimllm.scoring import SCORERS

    score = flat(CliRunner().invoke(app, ["score", "--help"]).output)
    assert all(name in score for name in SCORERS.names())
    train = flat(CliRunner().invoke(app, ["train", "--help"]).output)
    from trimllm.schedules import SCHEDULES

    assert all(name in train for name in SCHEDULES.names() + SCORERS.names()) and "Schedules (schedule.name)" in train
    assert "resumes" in train and "replace output_dir if it holds a trimllm run (never a folder with other files)" in train
    assert "never a folder with other files" in flat(CliRunner().invoke(app, ["drop", "--help"]).output)
