"""Bad input that shows only once a run has started: a failed run does not block its fix, a changed evaluation
does not retrain, a diverged stage exports nothing, and --overwrite replaces a run folder (only that)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import ROOT, run_cli, save_tiny
from tests.integration.test_train import TINY_RUN

pytestmark = pytest.mark.integration
SMOKE = str(ROOT / "recipes" / "smoke.yaml")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("tiny") / "qwen2")


trimllm = run_cli  # `trimllm(capsys, monkeypatch, *args)` reads like the command line


def train(capsys, monkeypatch, tiny_dir, out, *overrides):
    return trimllm(capsys, monkeypatch, "train", SMOKE, f"model.name={tiny_dir}", f"output_dir={out}", *TINY_RUN,
                   "schedule=oneshot", "stop.target_fraction=0.34", *overrides)


def test_a_run_that_failed_before_stage_0_does_not_block_its_fix(capsys, monkeypatch, tmp_path, tiny_dir):
    out = tmp_path / "run"
    from trimllm import pipeline

    def crash(*args, **kwargs):
        raise RuntimeError("the Trainer crashed")  # e.g. a value the Trainer cannot take

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "train_stage", crash)
        with pytest.raises(RuntimeError, match="crashed"):
            train(capsys, monkeypatch, tiny_dir, out, "train.lr=1e-3")
    assert (out / "resolved.yaml").is_file() and not (out / "stage_00").exists()
    code, text = train(capsys, monkeypatch, tiny_dir, out, "train.lr=2e-3")  # the corrected command, no --overwrite
    assert code == 0, text
    summary = text.split("== trimllm run finished ==")[1]  # the end-of-run block: cost and where things are
    assert "stages 1; final/ = stage 0: 6 -> 4 blocks" in summary and "tokens/s, peak memory" in summary
    assert f"{out / 'final'} {out / 'report.md'}" in summary
    assert json.loads((out / "run.json").read_text())["recipe"]["train"]["lr"] == 2e-3
    assert (out / "final" / "model.safetensors").is_file()


def test_changing_only_eval_redoes_the_evaluation_without_training(capsys, monkeypatch, tmp_path, tiny_dir):
    out = tmp_path / "run"
    assert train(capsys, monkeypatch, tiny_dir, out)[0] == 0
    stage = (out / "stage_00" / "model.safetensors").stat().st_mtime_ns
    from trimllm import pipeline

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(pipeline, "train_stage", no_training)
    code, text = train(capsys, monkeypatch, tiny_dir, out, "eval.tasks=[sciq]", "eval.limit=4")
    assert code == 0, text
    results = json.loads((out / "final_eval" / "results.json").read_text())
    assert "trimllm_sciq" in json.dumps(results)
    card = (out / "final" / "README.md").read_text()
    assert "## Evaluation" in card and "| science |" in card.split("## Evaluation")[1] and "## Recipe" in card
    assert (out / "stage_00" / "model.safetensors").stat().st_mtime_ns == stage
    code, text = train(capsys, monkeypatch, tiny_dir, out, "train.lr=1e-3")  # training changed: refused
    assert code == 2 and "holds a run of a different recipe" in text


def test_a_diverged_stage_stops_the_run_and_exports_nothing(capsys, monkeypatch, tmp_path, tiny_dir):
    out = tmp_path / "run"
    code, text = train(capsys, monkeypatch, tiny_dir, out, "train.lr=1e30", "lora.method=full")
    assert code == 2 and "stopped being finite numbers" in text and "Lower train.lr" in text, text
    assert not (out / "stage_00").exists() and not (out / "final").exists()


def test_overwrite_replaces_a_run_folder(capsys, monkeypatch, tmp_path, tiny_dir):
    out = tmp_path / "run"
    assert train(capsys, monkeypatch, tiny_dir, out)[0] == 0
    (out / "final_eval").mkdir()  # a trimllm output inside the run: still a run folder
    code, text = train(capsys, monkeypatch, tiny_dir, out, "train.lr=1e-3", "--overwrite")
    assert code == 0, text
    assert json.loads((out / "run.json").read_text())["recipe"]["train"]["lr"] == 1e-3
    assert not (out / "final_eval").exists()


def test_target_modules_are_checked_against_the_loaded_model(capsys, monkeypatch, tmp_path, tiny_dir):
    out = tmp_path / "run"
    code, text = train(capsys, monkeypatch, tiny_dir, out, "lora.target_modules=[q_projj,v_proj]")
    assert code == 2 and "'q_projj' names no linear module of this model. Did you mean 'q_proj'?" in text, text
    assert "v_proj'" not in text.split("Linear modules")[0]  # the right name is not reported
    assert not (out / "stage_00").exists()
    assert train(capsys, monkeypatch, tiny_dir, out, "lora.target_modules=[q_proj,v_proj]")[0] == 0  # the fix runs


def test_eval_out_into_a_model_folder_adds_the_results_to_its_card(capsys, monkeypatch, tmp_path, tiny_dir):
    export = tmp_path / "export"
    assert trimllm(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", export)[0] == 0
    code, text = trimllm(capsys, monkeypatch, "eval", export, "--tasks", "sciq", "--limit", "4", "--out", export)
    assert code == 0, text
    card = (export / "README.md").read_text()
    assert "| science |" in card.split("## Evaluation")[1] and (export / "results.json").is_file()
    assert trimllm(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "2", "--out", export, "--overwrite")[0] == 0


def test_train_and_eval_print_no_warning_a_user_cannot_act_on(tmp_path, tiny_dir):
    import os
    import subprocess

    trimllm_bin = [sys.executable, "-m", "trimllm"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    train = subprocess.run([*trimllm_bin, "train", SMOKE, f"model.name={tiny_dir}", f"output_dir={out}", *TINY_RUN,
                            "schedule=none"], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    evaluation = subprocess.run([*trimllm_bin, "eval", str(out / "final"), "--tasks", "sciq", "--limit", "2"],
                                capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    for result in (train, evaluation):
        assert result.returncode == 0, result.stderr[-2000:]
        assert "FutureWarning" not in result.stderr and "is_gradient_checkpointing" not in result.stderr
        assert "model kwarg is not of type" not in result.stderr and "already-initialized model" not in result.stderr
        assert "Custom kwargs can be passed" not in result.stderr
    assert "sciq" in evaluation.stdout  # the results table
