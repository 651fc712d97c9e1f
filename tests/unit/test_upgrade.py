"""The recipe's plug-in options (under their plug-in's key, checked by its registry) and the v0.2 spelling, which
still loads: each old key read in its new place, with one line naming the new spelling."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import ROOT
from trimllm.errors import RecipeError
from trimllm.registry import Registry
from trimllm.validation import load_recipe

V02 = """
model: {name: smollm2-135m}
data: {task: sciq, n_train: 64, n_validation: 32, n_calibration: 16}
scoring: {scorer: task_accuracy, proxy_k: 8, proxy: task_accuracy, proxy_fraction: 0.5, order: rescore}
schedule: {name: progressive, per_stage: 2}
stop: {target_fraction: 0.14}
lora: {r: 16, alpha: 32, pruned_r: 64, pruned_alpha: 128}
train: {lr: 2.0e-4, pruned_lr: 6.0e-4}
"""
V03 = """
model: {name: smollm2-135m}
data: {task: sciq, n_train: 64, n_validation: 32, n_calibration: 16}
scoring: {scorer: task_accuracy, options: {proxy_k: 8, proxy: task_accuracy, proxy_fraction: 0.5}}
schedule: {name: progressive, options: {per_stage: 2, order: rescore}}
stop: {target_fraction: 0.14}
lora: {r: 16, alpha: 32}
train: {lr: 2.0e-4}
pruned: {r: 64, alpha: 128, lr: 6.0e-4}
"""


def recipe_file(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_v02_recipe_loads_as_its_new_spelling_with_one_line_per_old_key(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trimllm.recipe_file"):
        old = load_recipe(recipe_file(tmp_path, V02, "old.yaml"))
    lines = [r.getMessage() for r in caplog.records if r.name == "trimllm.recipe_file"]
    new = load_recipe(recipe_file(tmp_path, V03, "new.yaml"))
    assert old.to_dict() == new.to_dict()
    assert len(lines) == 8, lines
    for line in ("scoring.proxy_k is now scoring.options.proxy_k", "scoring.order is now schedule.options.order",
                 "schedule.per_stage is now schedule.options.per_stage", "lora.pruned_r is now pruned.r",
                 "train.pruned_lr is now pruned.lr"):
        assert any(line in x for x in lines), (line, lines)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trimllm.recipe_file"):
        load_recipe(recipe_file(tmp_path, V03, "new.yaml"), ["schedule.options.per_stage=3"])
    assert not [r for r in caplog.records if r.name == "trimllm.recipe_file"]  # the new spelling: no line


def test_v02_overrides_and_v02_unset_values_still_work(tmp_path, caplog):
    smoke = ROOT / "recipes" / "smoke.yaml"  # progressive, options {per_stage: 2}
    with caplog.at_level(logging.WARNING, logger="trimllm.recipe_file"):
        assert load_recipe(smoke, ["schedule.per_stage=3"]).schedule.options["per_stage"] == 3  # the command line wins
    assert [r.getMessage() for r in caplog.records if r.name == "trimllm.recipe_file"] == [
        "recipe: schedule.per_stage is now schedule.options.per_stage (read as schedule.options.per_stage=3; write it "
        "so and this line goes)"]
    assert load_recipe(smoke, ["scoring.order=rescore"]).schedule.options["order"] == "rescore"
    assert load_recipe(smoke, ["train.pruned_lr=1e-3"]).pruned.lr == 1e-3
    # what a v0.2 resolved.yaml spelled for "not set" loads under any schedule: the plug-in's default applies
    unset = V02.replace("schedule: {name: progressive, per_stage: 2}", "schedule: {name: oneshot, per_stage: 1}")
    unset = unset.replace("proxy_k: 8, proxy: task_accuracy, proxy_fraction: 0.5, order: rescore",
                          "proxy_k: null, proxy: block_influence, proxy_fraction: 0.25, angular_n: 1, order: rescore")
    recipe = load_recipe(recipe_file(tmp_path, unset))
    assert recipe.schedule.options == {}
    assert recipe.scoring.options == {"fast": True, "proxy": "block_influence", "proxy_k": None, "proxy_fraction": 0.25}


def test_a_section_switched_by_an_enabled_flag_is_read_as_null_or_a_mapping(tmp_path, caplog):
    """Until v0.3 ``distill`` and ``pld`` had an ``enabled`` flag; now they are off when null and on when a mapping
    (as ``bridge``): a file or an override with the flag loads the same, with one line each."""
    flags = "distill: {enabled: true, alpha: 0.0, tokens: all}\npld: {enabled: false, theta_bar: 0.5, gamma: 0.001}\n"
    with caplog.at_level(logging.WARNING, logger="trimllm.recipe_file"):
        old = load_recipe(recipe_file(tmp_path, flags, "flags.yaml"))
        lines = [r.getMessage() for r in caplog.records if r.name == "trimllm.recipe_file"]
        assert load_recipe(ROOT / "recipes" / "smoke.yaml", ["pld.enabled=true"]).pld.gamma == 0.001
    new = load_recipe(recipe_file(tmp_path, "distill: {alpha: 0.0, tokens: all}\npld: null\n", "new.yaml"))
    assert old.to_dict() == new.to_dict() and new.pld is None and (new.distill.alpha, new.distill.tokens) == (0.0, "all")
    assert lines == [
        "recipe: distill.enabled is gone: distill: null is off, a distill: mapping is on (read as distill: {...}; write "
        "it so and this line goes)",
        "recipe: pld.enabled is gone: pld: null is off, a pld: mapping is on (read as pld: null; write it so and this "
        "line goes)"]
    assert load_recipe(ROOT / "recipes" / "smoke.yaml", ["distill.alpha=0.2", "distill.enabled=false"]).distill is None
    assert load_recipe(ROOT / "recipes" / "smoke.yaml", ["distill.alpha=0.2"]).distill.alpha == 0.2  # an option: on


def test_a_v02_option_that_the_schedule_does_not_take_is_refused_not_dropped():
    # v0.2 ignored schedule.per_stage under tuned_oneshot without a word; now it names the option and what is taken
    with pytest.raises(RecipeError, match="schedule 'tuned_oneshot' does not take option 'per_stage'"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", ["schedule=tuned_oneshot", "schedule.per_stage=3"])


def test_a_schedule_may_be_spelled_by_its_name(tmp_path):
    text = V03.replace("schedule: {name: progressive, options: {per_stage: 2, order: rescore}}", "schedule: oneshot")
    recipe = load_recipe(recipe_file(tmp_path, text))
    assert recipe.schedule.name == "oneshot" and recipe.schedule.options == {}
    smoke = ROOT / "recipes" / "smoke.yaml"  # progressive, per_stage 2
    switched = load_recipe(smoke, ["schedule=progressive", "schedule.options.order=rescore"])
    assert switched.schedule.options == {"per_stage": 1, "order": "rescore"}  # the file's per_stage replaced


def test_resolved_options_name_every_default_from_the_signature():
    science = load_recipe(ROOT / "recipes" / "science.yaml")  # task_accuracy with proxy_k 8
    assert science.scoring.options == {"fast": True, "proxy": "block_influence", "proxy_k": 8, "proxy_fraction": 0.25}
    angular = load_recipe(ROOT / "recipes" / "smoke.yaml", ["scoring.scorer=angular", "scoring.options.n=3"])
    assert angular.scoring.options == {"n": 3}
    with pytest.raises(RecipeError, match=r"scoring.options: n = 0 must be an integer >= 1"):
        load_recipe(ROOT / "recipes" / "smoke.yaml", ["scoring.scorer=angular", "scoring.options.n=0"])
    # the TrimLLM schedule scans with task_accuracy whatever scoring.scorer says: its options are task_accuracy's
    trimllm = load_recipe(ROOT / "recipes" / "smoke.yaml", ["schedule=trimllm", "scoring.options.proxy_k=8"])
    assert trimllm.scoring.options["proxy_k"] == 8


def test_a_plugin_registers_the_checks_of_its_options():
    things = Registry("thing")

    def _checks(options: dict) -> list[str]:
        return [] if options["size"] > 0 else [f"size = {options['size']} must be > 0"]

    @things.register("box", checks=_checks)
    def box(size: int = 1, colour: str = "red"):
        return size, colour

    assert things.defaults("box") == {"size": 1, "colour": "red"}
    assert things.option_problems("box", {"size": 2}, "thing.options") == []
    assert things.option_problems("box", {"size": 0}, "thing.options") == ["thing.options: size = 0 must be > 0"]
    assert things.option_problems("box", {"colour": "blue"}, "thing.options") == []  # the default size is checked
    refused = things.option_problems("box", {"colur": "blue"}, "thing.options")
    assert refused == ["thing.options: thing 'box' does not take option 'colur'. Did you mean 'colour'? "
                       "It takes: size, colour."]
    assert "does not take option 'size'" in things.option_problems("box", {"size": 2}, "x", passed=["size"])[0]


def test_a_saved_v02_run_keeps_the_options_of_the_plugins_that_ran():
    from trimllm.recipe_file import upgrade

    # TrimLLM's schedule scans with task_accuracy whatever scoring.scorer says: its proxy_k was in effect
    saved = {"schedule": {"name": "trimllm", "per_stage": 1},
             "scoring": {"scorer": "block_influence", "proxy_k": 8, "order": "rescore", "angular_n": 1}}
    assert upgrade(saved, saved=True) == []  # a run folder: no lines
    assert saved["scoring"]["options"] == {"proxy_k": 8} and saved["schedule"] == {"name": "trimllm"}
    # an option the run's plug-in did not take (v0.2 ignored it) is forgiven, not refused
    ignored = {"schedule": {"name": "tuned_oneshot", "per_stage": 4}, "scoring": {"scorer": "depth", "proxy_k": 8}}
    upgrade(ignored, saved=True)
    assert ignored["schedule"]["options"] == {} and ignored["scoring"]["options"] == {}
