"""`trimllm compress` end to end on a tiny model (the proof in plain transformers): its outputs, a choice that
follows from its recorded figures, a rerun at another tolerance that reuses them, a resume mid-search that ends
where an uninterrupted job does, and bad input refused before any training."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_cli, save_tiny
from trimllm import compression as compress_module
from trimllm import depth_search as ds
from trimllm.compression import compress
from trimllm.validation import load_recipe

pytestmark = pytest.mark.integration

TINY_JOB = ["data.n_train=16", "data.n_validation=8", "data.n_calibration=4", "data.max_length=96",
            "train.steps_per_stage=2", "train.batch_size=4", "train.logging_steps=1", "scoring.batch_size=8",
            "compress.step=1", "compress.max_fraction=0.67", "compress.probes=2", "compress.probe_fraction=0.5",
            "compress.verify_items=40", "compress.backoffs=1", "compress.runtime=transformers"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def recipe(tiny_dir, out, *overrides):
    return load_recipe(ROOT / "recipes" / "quickstart.yaml",
                       [f"model.name={tiny_dir}", f"output_dir={out}", *TINY_JOB, *overrides], job="compress")


def expected_choice(state: dict, tolerance: float) -> int:
    """The depth the recorded figures choose at ``tolerance``: the first healed depth of the order that verifies."""
    reference, confidence = state["reference"], state["choice"]["confidence"]
    estimates = {int(k): v for k, v in state["estimates"].items()}
    figures = {**{k: v["metric"] for k, v in state["probes"].items()},
               **{k: v["metric"] for k, v in state["heals"].items()}}  # a healed depth answers with that figure
    probed = {d: figures[str(d)] for d in state["choice"]["probed"]}
    safe = ds.safe_depth(estimates, reference, tolerance)
    for depth in ds.heal_order(probed, safe, reference, tolerance, backoffs=1):
        heal = state["heals"][str(depth)]
        if ds.verified(heal["drop"], heal["se"], tolerance, confidence):
            return depth
    return 0


def test_compress_end_to_end_and_again_at_another_tolerance(tiny_dir, tmp_path):
    out = tmp_path / "job"
    state = compress(recipe(tiny_dir, out), tolerance=100.0)  # every depth is within 100 points
    assert state["depths"] == [1, 2, 3, 4] and set(state["estimates"]) == {"1", "2", "3", "4"}
    assert state["choice"]["removed"] == 4 == expected_choice(state, 100.0) and state["probes"] == {}
    for name in ("compress.json", "compress.md", "compress.png", "final/config.json", "final/trimllm_check.safetensors",
                 "deploy/proof.json", "reference/run.json", "heal_04/run.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "final" / "config.json").read_text())["num_hidden_layers"] == 2
    assert state["proof"]["checks"][0]["ok"] and "Deployment proof" in (out / "final" / "README.md").read_text()
    assert not list((out / "heal_04").glob("stage_*"))  # the copies this job wrote are gone; final/ stays
    reference_file = (out / "reference" / "run.json").read_text()

    strict = compress(recipe(tiny_dir, out), tolerance=0.01)  # the same folder: the figures are reused
    assert (out / "reference" / "run.json").read_text() == reference_file
    assert strict["estimates"] == state["estimates"] and strict["reference"] == state["reference"]
    assert strict["choice"]["removed"] == expected_choice(strict, 0.01)
    kept = json.loads((out / "final" / "config.json").read_text())["num_hidden_layers"]
    assert kept == 6 - strict["choice"]["removed"]


def test_a_job_killed_mid_search_resumes_to_the_same_choice(tiny_dir, tmp_path, monkeypatch):
    tolerance = 2.0
    whole = compress(recipe(tiny_dir, tmp_path / "whole"), tolerance)
    original = compress_module.heal_and_verify

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after the reference, the estimates and the probes

    monkeypatch.setattr(compress_module, "heal_and_verify", killed)
    with pytest.raises(KeyboardInterrupt):
        compress(recipe(tiny_dir, tmp_path / "resumed"), tolerance)
    monkeypatch.setattr(compress_module, "heal_and_verify", original)
    resumed = compress(recipe(tiny_dir, tmp_path / "resumed"), tolerance)
    assert resumed["choice"]["removed"] == whole["choice"]["removed"]
    assert resumed["estimates"] == whole["estimates"]
    assert {k: v["metric"] for k, v in resumed["probes"].items()} == {k: v["metric"] for k, v in whole["probes"].items()}


@pytest.mark.parametrize("overrides, options, expected", [
    ([], ["--tolerance", "-1"], "the tolerance is the points the model may lose, > 0"),
    ([], ["--metric", "token_prob"], "multiple_choice data is measured by acc, not 'token_prob'"),
    ([], ["--quant", "q5_0"], "expected q8_0 or q4_k_m, got 'q5_0'"),
    (["data.n_train=null"], [], "leaves 0 of sciq (at least 10 needed): set data.n_train lower"),
    (["compress.confidence=1.5"], [], "compress.confidence = 1.5 must be in [0.5, 1)"),
    (["data.task=mmlu", "data.n_train=64"], [], "mmlu is a set of subset tasks with no single test task"),
])
def test_bad_input_is_refused_before_any_training(tiny_dir, tmp_path, capsys, monkeypatch, overrides, options,
                                                  expected):
    out = tmp_path / "job"
    code, output = run_cli(capsys, monkeypatch, "compress", ROOT / "recipes" / "quickstart.yaml",
                           f"model.name={tiny_dir}", f"output_dir={out}", *TINY_JOB, *overrides, *options)
    assert code == 2, output
    assert expected in output and "Traceback" not in output
    assert not (out / "reference").exists()


SUMS = [{"q": f"{a} plus {b} is", "sum": str(a + b)} for a in range(9) for b in range(9)]


@pytest.mark.parametrize("fmt", ["completion", "text"])
def test_compress_on_own_data_uses_the_formats_metric(tiny_dir, tmp_path, fmt):
    data = tmp_path / "sums.jsonl"
    records = SUMS if fmt == "completion" else [{"text": f"{r['q']} {r['sum']}. " * 3} for r in SUMS]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    own = [f"data.source={data}", f"data.format={fmt}", "data.n_train=24", "data.max_length=64"]
    own += ["data.doc_to_text='{{q}}'", "data.doc_to_target=' {{sum}}'"] if fmt == "completion" else []
    state = compress(recipe(tiny_dir, tmp_path / "job", *own), tolerance=100.0)
    assert state["choice"]["removed"] == 4
    heal = state["heals"]["4"]
    assert 10 <= heal["n"] <= 40 and 0 < heal["verify_metric"] < 1  # token probabilities of held-out records
    assert len(state["verify_reference"]) == heal["n"]
    assert all(0 < p < 1 for p in state["verify_reference"])  # not right / wrong: a probability per record


def test_a_healed_depth_that_misses_backs_off_to_the_next_shallower(tiny_dir, tmp_path, monkeypatch):
    from trimllm.surgery import get_plan

    real_metric = compress_module._metric

    def planted(model, *args):  # estimates: depths 1-2 keep the metric, deeper ones lose everything
        return real_metric(model, *args) if len(get_plan(model).dropped) <= 2 else -5.0  # far outside 100 points

    verdicts = []

    def first_misses(drop, se, tolerance, confidence):
        verdicts.append(drop)
        return len(verdicts) > 1

    monkeypatch.setattr(compress_module, "_metric", planted)
    monkeypatch.setattr(compress_module.depth_search, "verified", first_misses)
    state = compress(recipe(tiny_dir, tmp_path / "job"), tolerance=100.0)  # the probe at 4 passes: order [4, 2]
    assert state["choice"]["safe_depth"] == 2 and state["choice"]["probed"] == [4]
    assert state["choice"]["healed"] == [4, 2] and state["choice"]["removed"] == 2 and len(verdicts) == 2
    assert json.loads((tmp_path / "job" / "final" / "config.json").read_text())["num_hidden_layers"] == 4


def test_healing_distils_from_the_reference(tiny_dir, tmp_path):
    import yaml

    state = compress(recipe(tiny_dir, tmp_path / "job", "distill.alpha=0.5", "compress.max_fraction=0.34"), 100.0)
    assert state["choice"]["removed"] == 2
    saved = yaml.safe_load((tmp_path / "job" / "heal_02" / "resolved.yaml").read_text())
    assert saved["distill"]["teacher"] == str((tmp_path / "job" / "reference" / "final").resolve())
    assert saved["schedule"]["name"] == "oneshot" and saved["train"]["stage0_steps"] == 2


def test_full_length_probes_are_the_healings_they_predict(tiny_dir, tmp_path, monkeypatch):
    """``compress.probe_fraction: 1`` (the default): the bisection heals in full, the chosen depth's healing is its
    probe (healed once), and the search's cost counts every other run. The search policy is not part of what the
    figures measure: the same folder reruns under another probe length."""
    from trimllm.surgery import get_plan

    real_metric = compress_module._metric
    monkeypatch.setattr(compress_module, "_metric", lambda model, *args: real_metric(model, *args)
                        if len(get_plan(model).dropped) <= 2 else -5.0)  # the estimates keep depths 1-2 only
    state = compress(recipe(tiny_dir, tmp_path / "job", "compress.probe_fraction=1.0"), tolerance=100.0)
    assert state["choice"]["probed"] == [4] and state["probes"] == {} and list(state["heals"]) == ["4"]
    assert state["choice"]["removed"] == 4 and state["choice"]["search_seconds"] == state["estimate_seconds"]
    assert not (tmp_path / "job" / "probe_04").exists()
    again = compress(recipe(tiny_dir, tmp_path / "job", "compress.probe_fraction=0.5"), tolerance=100.0)
    assert again["choice"]["removed"] == 4 and list(again["heals"]) == ["4"] and again["probes"] == {}


def test_a_folder_of_another_recipe_is_refused_with_what_changed(tiny_dir, tmp_path):
    from trimllm.errors import RecipeError

    out = tmp_path / "job"
    compress(recipe(tiny_dir, out, "compress.max_fraction=0.34"), tolerance=100.0)
    with pytest.raises(RecipeError, match=r"holds a compress job of another recipe \(changed: train.lr: 0.0003 -> 0.001\)"):
        compress(recipe(tiny_dir, out, "compress.max_fraction=0.34", "train.lr=1e-3"), tolerance=100.0)
    state = json.loads((out / "compress.json").read_text())
    state["identity"]["train.gradient_checkpointing"] = False  # a job saved before it was a run option: resumes
    (out / "compress.json").write_text(json.dumps(state))
    assert compress(recipe(tiny_dir, out, "compress.max_fraction=0.34"), tolerance=100.0)["choice"]["removed"] == 2
