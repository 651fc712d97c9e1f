"""scripts/study_v1.py's bookkeeping: the compute budget of every method, resuming, and the target lines it writes."""

from __future__ import annotations

import argparse
import json
import runpy

import pytest

from tests.conftest import ROOT

study = runpy.run_path(str(ROOT / "scripts" / "study_v1.py"))


def record(method, fraction, acc, model="smollm2-135m", task="sciq", seed=0, **extra):
    return {"model": model, "method": method, "removed_fraction": fraction, "task": task, "seed": seed, "acc": acc,
            "acc_stderr": 0.02, "general_acc": 0.4, "general_acc_stderr": 0.03, "train_seconds": 100.0,
            "scoring_seconds": 1.0, "blocks_kept": 30, "params": 1e8, "inference_bound": 1.0, "stages": 4,
            "num_layers": 30, **extra}


def option(overrides: list[str], key: str) -> int | None:
    return next((int(o.split("=")[1]) for o in overrides if o.startswith(f"train.{key}=")), None)


def test_every_method_gets_at_most_the_budget_and_progressive_reaches_its_fraction():
    runs = study["methods"](32, 3, 30)
    assert [(r["method"], r["removed_fraction"]) for r in runs] == [
        ("none", 0.0), ("oneshot", 0.25), ("progressive", 0.25), ("oneshot", 0.5), ("progressive", 0.5),
        ("progressive+recovery", 0.25), ("progressive+recovery", 0.5), ("trimllm", None)]
    for r in runs:
        per_stage, final = option(r["overrides"], "steps_per_stage"), option(r["overrides"], "final_stage_steps")
        if r["method"] in ("progressive", "trimllm"):  # stage 0 + 3 removal stages
            total = 4 * per_stage
        elif r["method"] == "progressive+recovery":  # stages 0-2 short, the one after the last removal long
            total = 3 * per_stage + final
            assert final > per_stage
        else:
            total = per_stage
        assert 24 <= total <= 32, r
    per_stage = {r["removed_fraction"]: r["overrides"] for r in runs if r["method"] == "progressive"}
    assert "schedule.options.per_stage=5" in per_stage[0.5]  # 15 of 30 blocks in 3 stages
    assert "schedule.options.per_stage=3" in per_stage[0.25]  # 8 of 30 (rounded) in 3 stages, the last one capped


def test_targets_say_met_and_not_met():
    rows = [record("none", 0.0, 0.80), record("oneshot", 0.5, 0.70), record("progressive", 0.5, 0.795),
            record("progressive", 0.25, 0.79)]
    lines = study["_targets"]("m, sciq", rows)
    assert "(within 1 point)" in lines[0] and "(>= 3 points above)" in lines[0]
    assert lines[1].endswith("(NOT met)")
    rows[2] = record("progressive", 0.5, 0.78)
    assert "(NOT within 1 point)" in study["_targets"]("m, sciq", rows)[0]


def test_markdown_groups_by_model_and_task():
    records = [record("none", 0.0, 0.8), record("none", 0.0, 0.9, model="gemma3-270m"),
               record("none", 0.0, 0.5, task="financial_phrasebank")]
    assert list(study["_groups"](records)) == [("smollm2-135m", "sciq"), ("gemma3-270m", "sciq"),
                                               ("smollm2-135m", "financial_phrasebank")]
    setup = {"command": "python scripts/study.py", "date": "d", "device": "cpu", "dtype": "float32", "machine": "m",
             "torch": "t", "transformers": "x", "peft": "p", "lm_eval": "l", "minutes": 1.0, "budget_steps": 32,
             "batch_size": 8, "stages": 3, "domain_limit": 200, "general_limit": 30, "figures": "benchmarks/x.json"}
    text = study["markdown"]({"setup": setup, "records": records})
    assert "| gemma3-270m | sciq | none | 0% |" in text and "`benchmarks/x.png`" in text


def test_resume_keeps_done_runs_and_refuses_other_sizes(tmp_path):
    out = tmp_path / "study.json"
    sizes = {"budget_steps": 32, "stages": 3, "batch_size": 8, "max_length": 256, "n_validation": 64,
             "domain_limit": 200, "general_limit": 30}
    done = record("trimllm", 0.05, 0.8)
    out.write_text(json.dumps({"setup": {**sizes, "minutes": 3.0}, "records": [done]}))
    args = argparse.Namespace(resume=True, out=out, **sizes)
    assert study["_previous"](args)["records"] == [done]
    # a trimllm run is found again although its removed fraction is only known once it ran
    assert study["_key"](done) == ("smollm2-135m", "trimllm", None, "sciq", 0)
    with pytest.raises(SystemExit, match="budget_steps"):
        study["_previous"](argparse.Namespace(resume=True, out=out, **{**sizes, "budget_steps": 16}))
    assert study["_previous"](argparse.Namespace(resume=False, out=out, **sizes)) == {}
