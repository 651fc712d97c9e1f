"""scripts/study.py (v2)'s bookkeeping: every arm trains the same steps, each arm is the recipe it says it is, the
paired comparisons, and the table it writes."""

from __future__ import annotations

import argparse
import runpy

import pytest

from tests.conftest import ROOT
from trimllm.validation import load_recipe

study = runpy.run_path(str(ROOT / "scripts" / "study.py"))


@pytest.fixture
def teacher(tmp_path) -> str:
    """The `none` arm's model folder (it must exist; what it holds is not read here)."""
    (tmp_path / "none" / "final").mkdir(parents=True)
    return str(tmp_path / "none" / "final")


def recipe(teacher: str, arm: str, fraction: float = 0.5, steps: int = 94):
    overrides = study["arm_overrides"](arm, fraction, steps, 30, teacher)
    return load_recipe(ROOT / "recipes" / "smoke.yaml", ["eval.tasks=[]", *overrides])


def pruned_steps(r) -> int:
    """Optimizer steps spent on a pruned (or, for `none`, the full) model: every stage but a full-depth stage 0."""
    if r.schedule.name in ("none", "oneshot"):
        return r.train.steps_per_stage
    stages = 3  # removal stages of the progressive arms; stage 0 trains train.stage0_steps
    assert r.train.stage0_steps == 0
    return (stages - 1) * r.train.steps_per_stage + r.train.final_stage_steps


def test_every_arm_trains_the_same_steps_and_is_the_method_it_names(teacher):
    for steps in (63, 94):
        assert {pruned_steps(recipe(teacher, arm, steps=steps)) for arm in study["ARMS"]} == {steps}
    kd = recipe(teacher, "oneshot-kd")
    assert kd.distill is not None and kd.distill.teacher == teacher and kd.model.name == "smollm2-135m"
    assert recipe(teacher, "oneshot-ce").distill is None and recipe(teacher, "oneshot-ce").model.name == "smollm2-135m"
    fixed, rescore = recipe(teacher, "progressive-fixed-kd"), recipe(teacher, "progressive-rescore-ce")
    assert (fixed.schedule.options["order"], fixed.distill.teacher) == ("fixed", "stage0")
    assert (rescore.schedule.options["order"], rescore.distill) == ("rescore", None)
    assert fixed.model.name == rescore.model.name == recipe(teacher, "oneshot-ft-ce").model.name == teacher
    assert fixed.schedule.options["per_stage"] == 5  # 15 of 30 blocks in 3 stages
    assert recipe(teacher, "progressive-fixed-kd", 0.25).schedule.options["per_stage"] == 3  # 8 of 30 blocks, the last stage capped
    assert study["uses_teacher"]("oneshot-kd") and not study["uses_teacher"]("oneshot-ce")
    # the recovery levers: each differs from oneshot-ft-ce in the one setting it names
    base = recipe(teacher, "oneshot-ft-ce")
    partial, r64, lr = (recipe(teacher, arm) for arm in ("oneshot-ft-partial", "oneshot-ft-r64", "oneshot-ft-lr"))
    assert (partial.lora.method, partial.freeze.mode, partial.freeze.fraction, partial.train.lr) == ("full", "bottom",
                                                                                                  0.75, 5e-5)
    assert (r64.lora.r, r64.lora.alpha, r64.train.lr) == (64, 128, base.train.lr)
    assert (lr.train.lr, lr.lora.r) == (6e-4, base.lora.r) and base.model.name == lr.model.name == teacher  # 3x 2e-4
    both = recipe(teacher, "oneshot-ft-r64-lr")
    assert (both.lora.r, both.lora.alpha, both.train.lr, both.model.name) == (64, 128, 6e-4, teacher)
    dense = recipe(teacher, "oneshot-kd-all")  # oneshot-kd but for the positions the KL covers
    assert (dense.distill.tokens, kd.distill.tokens) == ("all", "answer")
    assert (dense.distill.teacher, dense.distill.alpha, dense.model.name) == (teacher, kd.distill.alpha, kd.model.name)
    hidden = recipe(teacher, "oneshot-kd-hidden")  # oneshot-kd plus the block-output cosine term
    assert (hidden.distill.hidden_weight, kd.distill.hidden_weight, dense.distill.hidden_weight) == (1.0, 0.0, 0.0)
    assert (hidden.distill.tokens, hidden.distill.teacher, hidden.model.name) == ("answer", teacher, kd.model.name)


def test_budget_is_one_epoch_of_the_examples():
    args = argparse.Namespace(batch_size=16, n_train_cap=None)
    assert study["budget_steps"]("financial_phrasebank", args) == 94
    assert study["budget_steps"]("sciq", args) == 63


def record(arm, fraction, correct, seed=0, task="financial_phrasebank"):
    return {"task": task, "arm": arm, "removed_fraction": fraction, "seed": seed, "correct": correct,
            "acc": correct.count("1") / len(correct), "acc_stderr": 0.01, "general_acc": 0.4, "train_seconds": 9.0,
            "blocks_kept": 15}


def test_comparisons_pair_the_same_items_and_pool_seeds():
    records = [record("none", 0.0, "1111111111" * 4), record("oneshot-ce", 0.5, "1100000000" * 4),
               record("oneshot-kd", 0.5, "1111110000" * 4), record("oneshot-kd", 0.5, "1111111100" * 4, seed=1),
               record("oneshot-ce", 0.5, "0011000000" * 4, seed=1)]
    rows = {(c["a"], c["b"]): c for c in study["comparisons"](records, resamples=2000)}
    kd = rows[("oneshot-kd", "oneshot-ce")]
    assert kd["seeds"] == 2 and abs(kd["diff"] - 0.5) < 1e-9  # (24 - 8 + 32 - 8) / 80
    # seed 0: kd right and ce wrong on 4 items in 10; seed 1: 6 in 10 (items 3-4 right in both), never ce alone
    assert kd["p"] < 1e-10 and 0.35 < kd["ci_low"] < 0.5 < kd["ci_high"] < 0.65
    assert rows[("oneshot-kd", "none")]["seeds"] == 1  # `none` ran on seed 0 only: paired on seed 0 only
    assert ("progressive-fixed-kd", "oneshot-ce") not in rows  # an arm that did not run is not compared
    equal = study["comparisons"]([record("oneshot-kd", 0.5, "10" * 20), record("oneshot-ce", 0.5, "10" * 20)])
    assert equal[0]["diff"] == 0 and equal[0]["p"] == 1.0 and equal[0]["ci_low"] == equal[0]["ci_high"] == 0


def test_default_arm_is_what_the_shipped_recipe_runs(monkeypatch):
    finance = load_recipe(ROOT / "recipes" / "finance.yaml", [])
    # since study v3 the shipped recipes run oneshot with the pruned model's rank 64 and 3x step: no arm of study v2
    assert finance.schedule.name == "oneshot" and finance.pruned.r == 64 and study["default_arm"]() is None
    former = load_recipe(ROOT / "recipes" / "finance.yaml", ["schedule=tuned_oneshot"])  # v0.2's shipped recipe
    monkeypatch.setitem(study["default_arm"].__globals__, "load_recipe", lambda *_: former)
    finance, arm = former, study["default_arm"]()
    assert arm == "oneshot-ft-r64-lr" and arm in study["ARMS"]
    # tuned_oneshot is the oneshot-ft arm (oneshot on the none arm's domain-tuned model) as one recipe
    assert arm.startswith({"tuned_oneshot": "oneshot-ft"}.get(finance.schedule.name, finance.schedule.name))
    assert arm.endswith("-kd") == (finance.distill is not None)
    # the recovery levers as recipe settings: the pruned model's rank or learning rate
    assert ("-r64" in arm) == (finance.pruned.r == 64)
    assert arm.endswith("-lr") == (finance.pruned.lr is not None and finance.pruned.lr > finance.train.lr)


def test_markdown_lists_every_run_and_comparison():
    records = [record("none", 0.0, "1110"), record("oneshot-kd", 0.5, "1100")]
    setup = {"command": "python scripts/study.py", "date": "d", "device": "cpu", "dtype": "float32", "machine": "m",
             "torch": "t", "transformers": "x", "peft": "p", "lm_eval": "l", "minutes": 1.0, "batch_size": 16,
             "general_limit": 100, "n_train": study["N_TRAIN"], "figures": "benchmarks/study_v2.json"}
    text = study["markdown"]({"setup": setup, "records": records, "comparisons": study["comparisons"](records),
                              "default_arm": "oneshot-kd"})
    assert "| financial_phrasebank | 50% | oneshot-kd † | 0 | 15 | 0.500 ± 0.010 |" in text
    assert "| financial_phrasebank | 50% | oneshot-kd | none | 1 | -0.250 |" in text
    assert "use `oneshot-kd`" in text


def test_lm_eval_check_agrees_with_the_packed_scorer_on_a_real_run_folder(tmp_path):
    """--lm-eval-check: lm-eval's own HFLM on a finished run's model gives the packed scorer's right / wrong on
    every document (here a tiny model with a block removed, the first 6 test documents), and the table says so."""
    from tests.conftest import build_tiny, tiny_tokenizer
    from trimllm.surgery import drop_blocks

    model, tokenizer = build_tiny("llama"), tiny_tokenizer()
    drop_blocks(model, [1])
    model.config.max_position_embeddings = 4096  # character tokens: lm-eval would cut the documents at 256
    final = tmp_path / "financial_phrasebank-oneshot-ce-0.5-0" / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    correct = "".join("1" if c else "0" for c in study["test_outcomes"](model, tokenizer, "financial_phrasebank", 4, 6))
    records = [record("oneshot-ce", 0.5, correct), record("none", 0.0, "1" * 6)]  # `none` has no folder: skipped
    args = argparse.Namespace(work=tmp_path, test_limit=6, eval_batch_size=4)
    checks = study["lm_eval_check"](records, ["oneshot-ce", "none"], args, tmp_path / "check.json")
    assert [(c["arm"], c["n"], c["same_outcome"]) for c in checks] == [("oneshot-ce", 6, 6)]
    assert checks[0]["acc_lm_eval"] == pytest.approx(correct.count("1") / 6, abs=1e-4)
    assert study["lm_eval_check"](records, ["oneshot-ce"], args, tmp_path / "check.json") == checks  # resumes
    table = study["lm_eval_lines"](tmp_path / "check.json")
    assert "| financial_phrasebank | 50% | oneshot-ce | 0 | 6 |" in table[-1] and "6 of 6" in table[-1]
