"""Runs on your own data end to end on a tiny model: each format trains, validates and evaluates through the lm-eval
task trimllm writes; that task gives plain lm-eval the same accuracy as `trimllm eval` and trimllm's scorer."""

from __future__ import annotations

import json
import math

import pytest

import trimllm
from tests.conftest import ROOT, run_cli, save_tiny
from trimllm.modeling import load_model
from trimllm.multiple_choice import mc_correct
from trimllm.pipeline import run
from trimllm.validation import load_recipe

pytestmark = pytest.mark.integration

TINY_RUN = ["data.n_train=24", "data.n_validation=8", "data.n_calibration=4", "data.max_length=64",
            "train.steps_per_stage=2", "train.batch_size=4", "train.logging_steps=1", "scoring.batch_size=8",
            "schedule=oneshot", "stop.target_fraction=0.34", "eval.limit=null", "eval.batch_size=4"]
SUMS = [{"q": f"{a} plus {b} is", "options": [str(a + b), str(a + b + 2), str(a * b + 9)], "gold": (a * b) % 3,
         "sum": str(a + b)} for a in range(9) for b in range(9)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SUMS))
    corpus = [{"text": f"Note {i}: {i} plus {i + 1} makes {2 * i + 1}; " * (1 + i % 3)} for i in range(90)]
    (folder / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    return folder


FORMATS = {
    "multiple_choice": ["data.source={d}/sums.jsonl", "data.doc_to_text='Q: {{{{q}}}}'", "data.doc_to_choice='{{{{options}}}}'",
                        "data.doc_to_target='{{{{gold}}}}'", "eval.tasks=[sums]"],
    "completion": ["data.source={d}/sums.jsonl", "data.doc_to_text='{{{{q}}}}'", "data.doc_to_target=' {{{{sum}}}}'",
                   "eval.tasks=[sums]"],
    "text": ["data.source={d}/notes.jsonl", "data.text_field=text", "eval.tasks=[notes]"],
}


def run_format(tiny_dir, files, out, fmt):
    overrides = [o.format(d=files) for o in FORMATS[fmt]]
    recipe = load_recipe(ROOT / "recipes" / "smoke.yaml", [f"model.name={tiny_dir}", f"output_dir={out}", *TINY_RUN,
                                                           f"data.format={fmt}", *overrides])
    return run(recipe)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_trains_validates_and_evaluates(tiny_dir, files, tmp_path, fmt):
    plan = run_format(tiny_dir, files, tmp_path / fmt, fmt)
    name = "notes" if fmt == "text" else "sums"
    assert [s["blocks_kept"] for s in plan["stages"]] == [4]
    assert all(0 < s["val_acc"] <= 1 for s in plan["stages"])
    assert (tmp_path / fmt / "tasks" / f"{name}.yaml").is_file()
    results = json.loads((tmp_path / fmt / "final_eval" / "results.json").read_text())["results"][name]
    metric = {"multiple_choice": "acc,none", "completion": "perplexity,none", "text": "word_perplexity,none"}[fmt]
    assert math.isfinite(results[metric])
    if fmt == "completion":  # lm-eval's perplexity is exp(-mean target loglik per document) >= 1
        assert results["perplexity,none"] >= 1


def test_the_written_task_gives_plain_lm_eval_trimllms_accuracy(tiny_dir, files, tmp_path, capsys, monkeypatch):
    """Plain lm-eval (its own TaskManager on the run's tasks/ folder, nothing of trimllm's), `trimllm eval
    --include-path` and trimllm's packed scorer on the test side agree, document by document."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out = tmp_path / "mc"
    run_format(tiny_dir, files, out, "multiple_choice")
    model, tokenizer = load_model(out / "final")
    plain = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), tasks=["sums"],
                            task_manager=TaskManager(include_path=str(out / "tasks"), include_defaults=False),
                            log_samples=True)
    plain_correct = [bool(s["acc"]) for s in sorted(plain["samples"]["sums"], key=lambda s: s["doc_id"])]

    from trimllm.formats import user_items
    from trimllm.user_data import user_sides

    recipe = load_recipe(out / "resolved.yaml")
    ours = mc_correct(model, tokenizer, user_items(recipe.data, list(user_sides(recipe.data).test)), 4, 64)
    assert ours == plain_correct and len(ours) > 10
    code, text = run_cli(capsys, monkeypatch, "eval", out / "final", "--tasks", "sums", "--include-path",
                         out / "tasks", "--batch-size", "4")
    assert code == 0 and f"| sums | {sum(ours) / len(ours):.4f} |" in text, text


def test_the_python_entry_point_runs_a_recipe(tiny_dir, files, tmp_path):
    result = trimllm.train(
        ROOT / "recipes" / "smoke.yaml", output_dir=str(tmp_path / "api"),
        model={"name": str(tiny_dir)},
        data={"source": str(files / "sums.jsonl"), "format": "completion", "doc_to_text": "{{q}}",
              "doc_to_target": " {{sum}}", "n_train": 16, "n_validation": 8, "n_calibration": 4, "max_length": 64},
        **{"train.steps_per_stage": 1, "train.batch_size": 4, "schedule": "none", "eval.tasks": []},
    )
    assert result["final"]["stage"] == 0 and (tmp_path / "api" / "final" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "api" / "run.json").read_text())["recipe"]["data"]["format"] == "completion"


@pytest.mark.parametrize("scorer", ["calibration_loss", "taylor", "angular", "activation_norm"])
def test_loss_and_hidden_state_scorers_work_on_plain_text(tiny_dir, files, tmp_path, scorer):
    """Every scorer but task_accuracy (which needs choices) scores a text corpus: the calibration blocks are the
    language-modelling text, and oneshot at a third removes 2 of the 6 blocks."""
    plan = run(load_recipe(
        ROOT / "recipes" / "smoke.yaml", [f"model.name={tiny_dir}", f"output_dir={tmp_path / scorer}", *TINY_RUN,
                                          "data.format=text", f"scoring.scorer={scorer}", "eval.tasks=[]",
                                          f"data.source={files}/notes.jsonl"]))
    stage = plan["stages"][0]
    assert len(stage["dropped"]) == 2 and len(stage["scores"]) == 6
    assert len(set(stage["scores"].values())) > 1  # the scores tell blocks apart
