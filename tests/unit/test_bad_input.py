"""Bad input, as a careless or hostile user gives it: every case ends in one clear message and exit code 2 (130 for
Ctrl-C), before any heavy work, and leaves what was on disk alone. Runs `trimllm` through its real entry point
(``trimllm.cli.main``, which turns user errors into messages), on tiny random models, without network."""

from __future__ import annotations

import os
import stat
import sys

import pytest

from tests.conftest import ROOT, run_cli, save_tiny
from trimllm import cli

SMOKE = str(ROOT / "recipes" / "smoke.yaml")


trimllm = run_cli  # `trimllm(capsys, monkeypatch, *args)` reads like the command line


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def no_traceback(text: str) -> bool:
    return "Traceback" not in text


# --- recipe values that cannot work: `validate` names each, before any model loads -------------------------------
@pytest.mark.parametrize("override, words", [
    ("data.n_train=0", "data.n_train = 0 must be >= 1"),
    ("data.n_train=-5", "data.n_train = -5 must be >= 1"),
    ("data.n_validation=0", "data.n_validation and data.n_calibration must be >= 1"),
    ("data.max_length=0", "data.max_length = 0 must be >= 1"),
    ("train.batch_size=0", "train.batch_size = 0 must be >= 1"),
    ("train.grad_accum=0", "train.grad_accum = 0 must be >= 1"),
    ("train.steps_per_stage=0", "train.steps_per_stage must be >= 1"),
    ("train.logging_steps=0", "train.logging_steps = 0 must be >= 1"),
    ("train.lr=.inf", "train.lr = inf must be a finite number"),
    ("train.lr=.nan", "train.lr = nan must be a finite number"),
    ("train.lr=-1e-4", "train.lr must be > 0"),
    ("train.warmup_ratio=5", "train.warmup_ratio = 5.0 must be in [0, 1)"),
    ("train.weight_decay=-1", "train.weight_decay = -1.0 must be >= 0"),
    ("train.lr_scheduler=cosin", "Did you mean 'cosine'"),
    ("train.optim=adamw_torh", "Did you mean 'adamw_torch'"),
    ("train.report_to=tensorbord", "Did you mean 'tensorboard'"),
    ("train.report_to=[wandb]", "train.report_to 'wandb': its package is not installed"),
    ("train.deepspeed=/nonexistent/ds.json", "train.deepspeed: file /nonexistent/ds.json not found"),
    ("lora.r=0", "lora.r = 0 must be >= 1"),
    ("pruned.r=0", "pruned.r = 0 must be >= 1 (null for lora.r)"),
    ("pruned.lr=-1", "pruned.lr = -1.0 must be a positive number (null for train.lr)"),
    ("pruned.alpha=0", "pruned.alpha = 0 must be > 0 (null for lora.alpha)"),
    ("lora.alpha=0", "lora.alpha = 0 must be > 0"),
    ("lora.dropout=2", "lora.dropout = 2.0 must be in [0, 1)"),
    ("scoring={scorer: task_accuracy, options: {proxy_k: -1}}", "scoring.options: proxy_k = -1 must be >= 1"),
    ("scoring.batch_size=0", "scoring.batch_size = 0 must be >= 1"),
    ("scoring={scorer: task_accuracy, options: {proxy_fraction: 0}}", "scoring.options: proxy_fraction = 0 must be in (0, 1]"),
    ("stop.max_modules=-1", "stop.max_modules = -1 must be >= 1"),
    ("stop.target_fraction=1.5", "stop.target_fraction = 1.5 must be in (0, 1)"),
    ("stop.accuracy_floor=2", "stop.accuracy_floor = 2.0 must be in (0, 1]"),
    ("eval.tasks=[sciqq]", "Unknown task or group 'sciqq'. Did you mean 'sciq'"),
    ("eval.batch_size=0", "eval.batch_size = 0 must be >= 1"),
    ("eval.limit=0", "eval.limit = 0 must be > 0"),
    ("model.dtype=int8", "model.dtype 'int8' unknown"),
    ("model.name=./no/such/model", "model.name: ./no/such/model not found"),
    ("model.name=/no/such/model.gguf", "model.name: /no/such/model.gguf not found"),
    ("schedule.options.per_stage=0", "schedule.options: per_stage = 0 must be an integer >= 1"),
    ("schedule.name=progresive", "Did you mean 'progressive'"),
    ("schedule.options.per_stag=2", "schedule 'progressive' does not take option 'per_stag'. Did you mean 'per_stage'"),
    ("schedule.name=tuned_oneshot", "schedule 'tuned_oneshot' does not take option 'per_stage'"),  # smoke's options
    ("schedule.name=oneshot", "schedule=oneshot on the command line replaces the whole schedule"),
    ("scoring.options.proxy_k=8", "scorer 'block_influence' does not take option 'proxy_k'"),
    ("scoring={scorer: task_accuracy, options: {proxy: taylr, proxy_k: 8}}", "proxy 'taylr' is not a scorer"),
    ("scoring.scorer=block_influense", "Did you mean 'block_influence'"),
    ("freeze.fraction=1", "freeze.fraction = 1.0 must be in [0, 1)"),
    ("data.task=sciqq", "Did you mean 'sciq'"),
    ("data.n_train=999999", "exceeds the"),
    ("train.lr=abc", "train.lr = 'abc' should be float"),
    ("trian.lr=1", "unknown key trian"),
    ("train.lr", "is not key=value"),
    ("train.lr=[", "the value is not valid YAML"),
    ("distill={}", "distill.teacher = stage0 needs a full-depth stage 0"),
])
def test_validate_refuses_what_cannot_work(capsys, monkeypatch, override, words):
    extra = ["schedule=oneshot", "stop.target_fraction=0.5"] if override == "distill={}" else []
    code, out = trimllm(capsys, monkeypatch, "validate", SMOKE, override, *extra)
    assert code == 2 and words in out and no_traceback(out), out


def test_validate_refuses_an_unknown_teacher_dtype(capsys, monkeypatch):
    code, out = trimllm(capsys, monkeypatch, "validate", SMOKE, "distill={}", "distill.teacher_dtype=int8")
    assert code == 2 and "distill.teacher_dtype = 'int8' must be auto, float32, bfloat16 or float16" in out, out
    assert no_traceback(out)


def test_validate_reports_every_problem_at_once(capsys, monkeypatch):
    code, out = trimllm(capsys, monkeypatch, "validate", SMOKE, "data.n_train=0", "lora.r=0", "train.optim=x",
                        "eval.tasks=[nope]")
    assert code == 2 and "has 4 problem(s)" in out


@pytest.mark.parametrize("text, words", [
    ("model:\n  name: a\nmodel:\n  dtype: auto\n", ":3:1: not valid YAML: duplicate key 'model' (first on line 1)"),
    ("train:\n  lr: 1\n  lr: 2\n", ":3:3: not valid YAML: duplicate key 'lr'"),
    ("model:\n  name: [a\ntrain: 1\n", ":3:6: not valid YAML"),
    ("- model\n", "must hold a mapping of sections"),
    ("model: 3\n", "model must be a mapping"),
])
def test_yaml_errors_name_the_file_line_and_column(capsys, monkeypatch, tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out = trimllm(capsys, monkeypatch, "validate", path)
    assert code == 2 and words in out and no_traceback(out), out
    if ":" in words[:2]:
        assert f"{path}{words}" in out


def test_missing_recipe_file(capsys, monkeypatch, tmp_path):
    code, out = trimllm(capsys, monkeypatch, "validate", tmp_path / "nope.yaml")
    assert code == 2 and "not found" in out


def test_a_malformed_data_line_names_file_and_line(capsys, monkeypatch, tmp_path):
    (tmp_path / "sciq").mkdir()
    good = (ROOT.parent / "shared" / "data" / "sciq" / "train.jsonl").read_text().splitlines()[:3]
    (tmp_path / "sciq" / "train.jsonl").write_text("\n".join([*good, "{not json"]) + "\n")
    monkeypatch.setenv("TRIMLLM_DATA_DIR", str(tmp_path))
    code, out = trimllm(capsys, monkeypatch, "validate", SMOKE)
    assert code == 2 and "train.jsonl, line 4: not a JSON object" in out and no_traceback(out), out


# --- command-line options out of range: refused before the model loads (a model that does not exist proves it) --
@pytest.mark.parametrize("args, words", [
    (["score", "no-model", "--out", "{tmp}/s", "--n-calib", "0"], "--n-calib must be >= 1, got 0"),
    (["score", "no-model", "--out", "{tmp}/s", "--n-calib", "-3"], "--n-calib must be >= 1, got -3"),
    (["score", "no-model", "--out", "{tmp}/s", "--proxy-k", "-1"], "--proxy-k must be >= 1, got -1"),
    (["score", "no-model", "--out", "{tmp}/s", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["score", "no-model", "--out", "{tmp}/s", "--scorer", "nope"], "nope"),
    (["score", "no-model", "--out", "{tmp}/s", "--granularity", "half"], "--granularity must be one of"),
    (["score", "no-model", "--out", "{tmp}/s", "--data", "piqa"], "has no multiple-choice prompt"),
    (["eval", "no-model", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["eval", "no-model", "--num-fewshot", "-1"], "--num-fewshot must be >= 0, got -1"),
    (["eval", "no-model", "--limit", "0"], "--limit must be > 0"),
    (["eval", "no-model", "--tasks", "sciqq"], "Did you mean 'sciq'"),
    (["eval", "no-model", "--log-samples"], "--log-samples needs --out"),
    (["drop", "no-model", "--out", "{tmp}/d"], "nothing to remove"),
    (["drop", "no-model", "--out", "{tmp}/d", "--blocks", "1,x"], "comma-separated block indices"),
    (["drop", "no-model", "--out", "{tmp}/d", "--mlp", "1", "--bridge", "sciq"], "--bridge bridges the cuts of --blocks"),
    (["drop", "no-model", "--out", "{tmp}/d", "--blocks", "1", "--bridge", "sciqq"], "Did you mean 'sciq'"),
    (["drop", "no-model", "--out", "{tmp}/d", "--blocks", "1", "--bridge", "piqa"], "'piqa' has no prompt format"),
    (["drop", "no-model", "--out", "{tmp}/d", "--blocks", "1", "--bridge", "sciq", "--bridge-ridge", "0"],
     "must be > 0"),
    (["bench", "no-model", "--repeats", "0"], "--repeats must be >= 1"),
    (["bench", "no-model", "--out", "{tmp}/b.txt"], "--out is a JSON file path"),
    (["bench", "no-model", "--out", "{tmp}/f/b.json"], "f is a file; the output is a folder"),
])
def test_options_out_of_range_are_refused_before_loading(capsys, monkeypatch, tmp_path, args, words):
    (tmp_path / "f").write_text("a file where a folder is expected")
    code, out = trimllm(capsys, monkeypatch, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and words in out and no_traceback(out), out
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


# --- models that cannot be loaded: one line, fast ------------------------------------------------------------------
@pytest.mark.parametrize("spec, words", [
    ("smollm2-135M", "Did you mean 'smollm2-135m'"),
    ("smolm2-135m", "Did you mean 'smollm2-135m'"),
    ("/no/such/dir", "Could not load model"),
    ("missing.gguf", "GGUF file missing.gguf does not exist"),
])
def test_model_specs_that_do_not_load(capsys, monkeypatch, spec, words):
    code, out = trimllm(capsys, monkeypatch, "info", spec)
    assert code == 2 and words in out and no_traceback(out), out


def test_a_hub_id_offline_fails_at_once(capsys, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    code, out = trimllm(capsys, monkeypatch, "info", "some-org/some-model")
    assert code == 2 and "could not be fetched from the Hugging Face Hub" in out
    assert time.perf_counter() - started < 15  # transformers alone retries for about a minute


def test_a_corrupt_config_json_is_one_message(capsys, monkeypatch, tmp_path, tiny_dir):
    import shutil

    broken = shutil.copytree(tiny_dir, tmp_path / "broken")
    (broken / "config.json").write_text("{ not json")
    code, out = trimllm(capsys, monkeypatch, "info", broken)
    assert code == 2 and "holds a model that cannot be read" in out and no_traceback(out), out


def test_an_unsupported_architecture_in_train_is_one_message(capsys, monkeypatch, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import tiny_tokenizer

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=96, n_positions=128)).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, f"model.name={path}", f"output_dir={tmp_path / 'run'}")
    assert code == 2 and "does not support model_type 'gpt2'" in out and not (tmp_path / "run" / "stage_00").exists(), out


# --- destructive options never delete what trimllm did not write -------------------------------------------------
@pytest.fixture
def precious(tmp_path):
    """A folder with a user's files in it."""
    folder = tmp_path / "mine"
    (folder / "notes").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "notes" / "a.txt").write_text("notes")
    return folder


def untouched(folder) -> bool:
    return (folder / "thesis.tex").read_text() == "years of work" and (folder / "notes" / "a.txt").is_file()


def test_train_overwrite_refuses_a_folder_with_other_files(capsys, monkeypatch, precious):
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, f"output_dir={precious}", "model.name=/no/model",
                        "--overwrite")
    assert code == 2 and untouched(precious), out  # refused by validate (bad model) or by the folder check
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, f"output_dir={precious}", "--overwrite")
    assert code == 2 and "holds files trimllm did not write (notes, thesis.tex)" in out and untouched(precious), out


def test_train_overwrite_refuses_the_current_directory(capsys, monkeypatch, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "resolved.yaml").write_text("model: {}\n")  # looks like a run, but it is where the user stands
    monkeypatch.chdir(work)
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, "output_dir=.", "--overwrite")
    assert code == 2 and "it is the current directory" in out and (work / "resolved.yaml").is_file(), out


def test_train_overwrite_refuses_a_parent_of_the_current_directory(capsys, monkeypatch, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, f"output_dir={tmp_path / 'a'}", "--overwrite")
    assert code == 2 and "it contains the current directory" in out and (tmp_path / "a" / "b").is_dir(), out


def test_train_without_overwrite_refuses_a_folder_with_other_files(capsys, monkeypatch, precious):
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, f"output_dir={precious}")
    assert code == 2 and "holds no trimllm run" in out and untouched(precious)


def test_train_refuses_an_output_dir_that_is_a_file(capsys, monkeypatch, tmp_path):
    (tmp_path / "f").write_text("x")
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, f"output_dir={tmp_path / 'f'}")
    assert code == 2 and "is a file" in out and (tmp_path / "f").read_text() == "x"


def test_drop_overwrite_refuses_a_folder_with_other_files(capsys, monkeypatch, precious, tiny_dir):
    code, out = trimllm(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", precious, "--overwrite")
    assert code == 2 and "nothing was deleted" in out and untouched(precious), out


def test_drop_without_overwrite_refuses_a_non_empty_folder(capsys, monkeypatch, precious, tiny_dir):
    code, out = trimllm(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", precious)
    assert code == 2 and "is not empty" in out and untouched(precious)


def test_drop_overwrite_replaces_its_own_export(capsys, monkeypatch, tmp_path, tiny_dir):
    out_dir = tmp_path / "export"
    assert trimllm(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", out_dir)[0] == 0
    code, out = trimllm(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "2,3", "--out", out_dir, "--overwrite")
    assert code == 0, out
    import json

    assert json.loads((out_dir / "config.json").read_text())["num_hidden_layers"] == 4


def test_score_refuses_a_model_folder_as_out(capsys, monkeypatch, tiny_dir):
    before = sorted(p.name for p in tiny_dir.iterdir())
    code, out = trimllm(capsys, monkeypatch, "score", tiny_dir, "--out", tiny_dir, "--n-calib", "4")
    assert code == 2 and "does not hold trimllm scores" in out
    assert sorted(p.name for p in tiny_dir.iterdir()) == before and not (tiny_dir / "scores.json").exists()


def test_eval_refuses_a_folder_with_other_files_as_out(capsys, monkeypatch, precious):
    code, out = trimllm(capsys, monkeypatch, "eval", "no-model", "--out", precious)
    assert code == 2 and "does not hold trimllm results" in out and untouched(precious)


def test_an_out_that_cannot_be_created_is_refused_before_the_work(capsys, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("x")
    code, out = trimllm(capsys, monkeypatch, "score", "no-model", "--out", tmp_path / "file" / "s")
    assert code == 2 and "cannot be created" in out and (tmp_path / "file").read_text() == "x"


# --- what trimllm writes gets the user's permissions -------------------------------------------------------------
def test_exported_folders_follow_the_umask(capsys, monkeypatch, tmp_path, tiny_dir):
    old = os.umask(0o022)
    try:
        assert trimllm(capsys, monkeypatch, "drop", tiny_dir, "--blocks", "1", "--out", tmp_path / "e")[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "e").stat().st_mode) == 0o755


# --- Ctrl-C --------------------------------------------------------------------------------------------------------
def test_ctrl_c_during_train_says_how_to_resume(capsys, monkeypatch, tmp_path):
    from trimllm import pipeline

    def interrupted(recipe, overwrite=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted)
    code, out = trimllm(capsys, monkeypatch, "train", SMOKE, f"output_dir={tmp_path / 'r'}")
    assert code == 130 and "rerun the same command to resume" in out and no_traceback(out)


def test_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    from trimllm.modeling import ModelLoadError

    args = ["train", SMOKE, "model.name=smollm2-135M", f"output_dir={tmp_path / 'r'}"]
    code, out = trimllm(capsys, monkeypatch, *args)
    assert code == 2 and "Did you mean 'smollm2-135m'" in out and "TRIMLLM_DEBUG=1" in out and no_traceback(out)
    monkeypatch.setenv("TRIMLLM_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["trimllm", *args])
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        cli.main()
