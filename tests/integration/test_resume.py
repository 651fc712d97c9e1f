"""Resume: a run killed mid-stage (SIGKILL, in a subprocess) and rerun with the same command ends with the same
plan and the same final model as an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import ROOT, save_tiny
from tests.integration.test_train import TINY_RUN, run_tiny, without_times
from trimllm.pipeline import run
from trimllm.validation import load_recipe

pytestmark = pytest.mark.integration

RESUME_RUN = ["schedule.options.per_stage=1", "stop.target_fraction=0.34", "train.steps_per_stage=4", "train.save_steps=2"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama")


def comparable(plan: dict) -> dict:
    return {**without_times(plan), "recipe": None}  # output_dir differs


def final_logits(out) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    with torch.no_grad():
        return model(torch.arange(4, 40).unsqueeze(0)).logits


def kill_run(tiny_dir, out, at: str, extra: list[str]) -> list[str]:
    """Start the resume test's run in ``out`` and SIGKILL it at ``at`` (``stage:step``); returns its overrides."""
    overrides = [f"model.name={tiny_dir}", f"output_dir={out}", *TINY_RUN, *RESUME_RUN, *extra]
    killed = subprocess.run([sys.executable, "-m", "tests.helpers.killed_train", at,
                             str(ROOT / "recipes" / "smoke.yaml"), *overrides], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "TRIMLLM_LOG_LEVEL": "WARNING"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    return overrides


DISTILL = ["distill={}", "distill.tokens=all", "distill.hidden_weight=0.5", "schedule.options.order=fixed"]


@pytest.mark.parametrize("extra", [[], DISTILL, ["bridge={}"]], ids=["plain", "distill", "bridge"])
def test_killed_mid_stage_resumes_to_the_same_plan_and_model(tiny_dir, tmp_path, extra):
    reference = run_tiny(tiny_dir, tmp_path / "ref", *RESUME_RUN, *extra)
    out = tmp_path / "killed"
    overrides = kill_run(tiny_dir, out, "1:2", extra)
    partial = json.loads((out / "run.json").read_text())
    assert [s["stage"] for s in partial["stages"]] == [0] and partial["running"]["stage"] == 1
    assert (out / ".trainer" / "stage_01" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "final").exists()

    resumed = run(load_recipe(ROOT / "recipes" / "smoke.yaml", overrides))
    assert comparable(resumed) == comparable(reference)
    torch.testing.assert_close(final_logits(out), final_logits(tmp_path / "ref"), rtol=1e-5, atol=1e-5)
    steps = [(m["stage"], m["step"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "loss" in m]
    assert len(steps) == len(set(steps)) == 12  # 3 stages x 4 steps, none logged twice


def test_rerunning_a_finished_run_returns_its_plan(tiny_dir, tmp_path):
    first = run_tiny(tiny_dir, tmp_path / "done", "schedule=none")
    stamp = (tmp_path / "done" / "final" / "model.safetensors").stat().st_mtime_ns
    again = run_tiny(tiny_dir, tmp_path / "done", "schedule=none")
    assert without_times(again) == without_times(first)
    assert (tmp_path / "done" / "final" / "model.safetensors").stat().st_mtime_ns == stamp  # nothing retrained


def test_a_run_of_an_older_trimllm_without_the_newer_keys_still_resumes(tiny_dir, tmp_path):
    """A key added since the run started (here the own-data keys) is at its default, which keeps the old behaviour:
    the finished run is found, not refused as another recipe (its resolved.yaml then lists them); a newer key set
    away from its default still is."""
    import yaml

    first = run_tiny(tiny_dir, tmp_path / "old", "schedule=none")
    saved = yaml.safe_load((tmp_path / "old" / "resolved.yaml").read_text())
    for key in ("source", "format", "doc_to_text", "text_field", "splits", "test_fraction"):
        del saved["data"][key]
    del saved["train"]["seed"]  # a newer key that is valid without own data too
    (tmp_path / "old" / "resolved.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert without_times(run_tiny(tiny_dir, tmp_path / "old", "schedule=none")) == without_times(first)
    # (own-data keys such as data.test_fraction are now refused without data.source, before any run folder is read)
    with pytest.raises(FileExistsError, match=r"different recipe \(train\.seed: 0 -> 1\)"):
        run_tiny(tiny_dir, tmp_path / "old", "schedule=none", "train.seed=1")


def test_a_different_recipe_is_refused_with_the_differences(tiny_dir, tmp_path):
    run_tiny(tiny_dir, tmp_path / "r", "schedule=none")
    with pytest.raises(FileExistsError, match=r"different recipe \(train\.lr: 0\.0003 -> 0\.001\)"):
        run(load_recipe(ROOT / "recipes" / "smoke.yaml", [f"model.name={tiny_dir}", f"output_dir={tmp_path / 'r'}",
                                                          *TINY_RUN, "schedule=none", "train.lr=1e-3"]))


def test_killed_run_with_small_exports_resumes_to_the_same_plan_and_model(tiny_dir, tmp_path):
    """export.dtype / export.stages shrink what is kept, never what a resumed run reloads."""
    from safetensors.torch import load_file

    disk = ["export.dtype=bfloat16", "export.stages=final"]
    reference = run_tiny(tiny_dir, tmp_path / "ref", *RESUME_RUN, *disk)
    out = tmp_path / "killed"
    overrides = kill_run(tiny_dir, out, "2:2", disk)
    assert [s["stage"] for s in json.loads((out / "run.json").read_text())["stages"]] == [0, 1]
    assert {t.dtype for t in load_file(out / "stage_00" / "model.safetensors").values()} == {torch.bfloat16}
    assert {t.dtype for t in load_file(out / "stage_01" / "model.safetensors").values()} == {torch.float32}
    resumed = run(load_recipe(ROOT / "recipes" / "smoke.yaml", overrides))
    assert comparable(resumed) == comparable(reference)
    torch.testing.assert_close(final_logits(out), final_logits(tmp_path / "ref"), rtol=0, atol=0)
    assert not (out / "stage_00").exists() and (out / "stage_01").is_dir()  # the last two of three stages


def v02_spelling(saved: dict) -> dict:
    """A resolved.yaml as v0.2 wrote it: the plug-in options and the pruned overrides under their former keys."""
    options = saved["schedule"].pop("options")
    saved["schedule"]["per_stage"] = options.get("per_stage", 1)
    saved["scoring"].pop("options")
    saved["scoring"].update(proxy_k=None, proxy="block_influence", proxy_fraction=0.25, angular_n=1,
                            order=options.get("order", "rescore"))  # v0.2 wrote rescore where there was no order
    pruned = saved.pop("pruned")
    saved["lora"].update(pruned_r=pruned["r"], pruned_alpha=pruned["alpha"])
    saved["train"]["pruned_lr"] = pruned["lr"]
    # until v0.3, distill and pld were switched by a flag, every key spelled
    distill = {k: v for k, v in (saved["distill"] or {}).items() if k not in ("cache_k", "cache_dir")}
    saved["distill"] = {"enabled": saved["distill"] is not None, "teacher": "stage0", "alpha": 0.5,
                        "temperature": 1.0, "tokens": "answer", "hidden_weight": 0.0, "teacher_dtype": "auto", **distill}
    saved["pld"] = {"enabled": False, "theta_bar": 0.5, "gamma": 0.001}
    return saved


def test_a_progressive_run_saved_under_the_former_order_default_resumes_only_when_told(tiny_dir, tmp_path):
    """The progressive order's default changed from rescore to fixed (study v2): a run saved under the old default
    (its resolved.yaml says rescore, or has no scoring.order at all) is refused, with the override that resumes it as
    it started, instead of continuing under the other order; a run folder of v0.2 (the former spelling) resumes."""
    import yaml

    from trimllm.rundir import prepare

    out = tmp_path / "old"
    run_tiny(tiny_dir, out, "schedule=none")
    saved = v02_spelling(yaml.safe_load((out / "resolved.yaml").read_text()))
    assert saved["scoring"]["order"] == "rescore"  # the only order a non-progressive schedule had
    (out / "resolved.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    base = [f"model.name={tiny_dir}", f"output_dir={out}", *TINY_RUN]
    assert prepare(out, load_recipe(ROOT / "recipes" / "smoke.yaml", [*base, "schedule=none"]), False)
    del saved["scoring"]["order"]  # a run from before the key existed
    (out / "resolved.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert prepare(out, load_recipe(ROOT / "recipes" / "smoke.yaml", [*base, "schedule=none"]), False)

    saved["schedule"].update(name="progressive", per_stage=2)
    for order in ("absent", "rescore"):  # saved before the key existed; saved under the former default
        if order == "rescore":
            saved["scoring"]["order"] = order
        (out / "resolved.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
        progressive = load_recipe(ROOT / "recipes" / "smoke.yaml", base)
        assert progressive.schedule.name == "progressive" and progressive.schedule.options["order"] == "fixed"
        with pytest.raises(FileExistsError, match=r"schedule\.options\.order: 'rescore' -> 'fixed'.*pass "
                                                  r"schedule\.options\.order=rescore to resume this run"):
            prepare(out, progressive, False)
        assert prepare(out, load_recipe(ROOT / "recipes" / "smoke.yaml", [*base, "schedule.options.order=rescore"]),
                       False)
    saved["scoring"]["order"] = "fixed"  # v0.2's progressive default, spelled the v0.2 way: resumes as it is
    (out / "resolved.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert prepare(out, progressive, False)


def test_a_killed_run_resumes_after_its_run_options_changed(tiny_dir, tmp_path):
    """Logging, trackers, checkpoint cadence and checkpointing (rundir.RUN_OPTIONS) are not the run's identity: a run killed
    mid-stage resumes under new values of them to the plan and model of an uninterrupted run, and resolved.yaml
    then names the new values. A key of the method changed as well is still refused."""
    import yaml

    reference = run_tiny(tiny_dir, tmp_path / "ref", *RESUME_RUN)
    out = tmp_path / "killed"
    overrides = kill_run(tiny_dir, out, "1:2", [])
    changed = [*overrides, "train.logging_steps=1", "train.report_to=tensorboard", "export.stages=final",
               "eval.batch_size=3", "train.gradient_checkpointing=true"]  # a run of v0.3 saved false: memory only
    with pytest.raises(FileExistsError, match=r"different recipe \(train\.lr: 0\.0003 -> 0\.001\)"):
        run(load_recipe(ROOT / "recipes" / "smoke.yaml", [*changed, "train.lr=1e-3"]))
    resumed = run(load_recipe(ROOT / "recipes" / "smoke.yaml", changed))
    assert comparable(resumed) == comparable(reference)
    torch.testing.assert_close(final_logits(out), final_logits(tmp_path / "ref"), rtol=1e-5, atol=1e-5)
    saved = yaml.safe_load((out / "resolved.yaml").read_text())
    assert (saved["train"]["logging_steps"], saved["train"]["report_to"]) == (1, "tensorboard")
    assert any((out / "tensorboard" / "stage_02").iterdir())  # the tracker of the resumed stages ran
