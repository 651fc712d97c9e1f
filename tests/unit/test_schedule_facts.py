"""A schedule is one file and one registration: the facts it registers with (trimllm.schedules.ScheduleFacts), not
its name, decide the recipe checks, the progress estimate, the stop rules' units and the default of its options.
Here schedules registered in this test file, and nowhere else, get all of that right."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from trimllm.config import Recipe, RecipeError, StopConfig
from trimllm.decisions import expected_stages, granularity, schedule_options
from trimllm.plan import Plan
from trimllm.schedules import SCHEDULES, Decision, ScheduleFacts, StageContext
from trimllm.stop import budget
from trimllm.validation import load_recipe

SMOKE = ROOT / "recipes" / "smoke.yaml"


def in_halves(ctx: StageContext, order: str = "rescore") -> Decision:  # an option with its own default
    return Decision(last=True)


def untouched(ctx: StageContext) -> Decision:
    return Decision(last=True)


def chunked(ctx: StageContext, per_stage: int = 1) -> Decision:
    return Decision(last=True)


@pytest.fixture
def registered(monkeypatch):
    """Three schedules registered for the test only (the registry is restored afterwards)."""
    facts = {"in_halves": (in_halves, ScheduleFacts(stages=3, needs_target_fraction=True, granularity="sublayer")),
             "untouched": (untouched, ScheduleFacts(removes=False, full_depth_stage0=False, stages=1)),
             "chunked": (chunked, None)}  # registered without facts: the defaults
    for name, (schedule, declared) in facts.items():
        monkeypatch.setitem(SCHEDULES._items, name, schedule)
        monkeypatch.setitem(SCHEDULES._facts, name, declared)
    return facts


def problems(*overrides: str) -> list[str]:
    try:
        load_recipe(SMOKE, list(overrides))
    except RecipeError as err:
        return err.problems
    return []


def test_the_checks_follow_the_declared_facts(registered):
    assert problems("schedule=in_halves", "stop.target_fraction=null", "stop.max_modules=2") == [
        "schedule in_halves needs stop.target_fraction"]
    assert problems("schedule=untouched", "stop.target_fraction=null") == []  # removes nothing: no stop rule
    assert problems("schedule.name=chunked", "stop.target_fraction=null") == [
        "no stop rule: set stop.target_fraction, stop.target_params_fraction, stop.max_modules, stop.accuracy_floor "
        "or stop.max_drop"]
    # a stage0 teacher exists where stage 0 trains the full depth before anything is removed
    assert problems("schedule.name=chunked", "distill={}") == []
    assert any("distill.teacher = stage0 needs a full-depth stage 0, which schedule 'untouched'" in p
               for p in problems("schedule=untouched", "distill={}"))


def test_an_order_option_takes_its_default_from_the_signature_and_fixed_is_refused_elsewhere(registered):
    assert load_recipe(SMOKE, ["schedule=in_halves"]).schedule.options == {"order": "rescore"}  # its own default
    assert load_recipe(SMOKE, ["schedule=in_halves", "schedule.options.order=fixed"]).schedule.options == {"order": "fixed"}
    refused = problems("schedule.name=chunked", "schedule.options.order=fixed")
    assert len(refused) == 1 and "schedule 'chunked' does not take option 'order'" in refused[0]


def test_progress_estimate_units_and_options_follow_the_facts(registered):
    fresh = Plan("m", "llama", 30)
    recipe = load_recipe(SMOKE, ["schedule=in_halves", "scoring.granularity=block", "stop.target_fraction=0.1"])
    assert granularity(recipe) == "sublayer"  # the schedule's units, whatever scoring says
    assert budget(fresh, recipe.stop, granularity(recipe)) == 6  # 10 % of 60 halves
    assert schedule_options(recipe) == {"order": "rescore"}  # per_stage (smoke.yaml: 2) is not one of its options
    assert expected_stages_for(recipe, fresh) == 3  # declared

    chunked_recipe = load_recipe(SMOKE, ["schedule.name=chunked", "stop.target_fraction=0.2"])  # smoke: per_stage 2
    assert schedule_options(chunked_recipe) == {"per_stage": 2}
    assert expected_stages_for(chunked_recipe, fresh) == 1 + 3  # stage 0, then 6 blocks at 2 a stage
    assert expected_stages_for(load_recipe(SMOKE, ["schedule=untouched"]), fresh) == 1


def expected_stages_for(recipe: Recipe, plan: Plan) -> int | None:
    from trimllm.stop import expected_stages as by_name

    model = type("Model", (), {"trimllm_plan": plan})()  # get_plan reads the model's plan
    assert expected_stages(recipe, model, 0) == by_name(recipe.schedule.name, recipe.schedule.options.get("per_stage", 1), plan,
                                                         recipe.stop, granularity(recipe), 0)
    return expected_stages(recipe, model, 0)


def test_without_a_stop_rule_the_estimate_is_unknown(registered):
    assert expected_stages_for_stop("chunked", StopConfig(target_fraction=None, accuracy_floor=0.9)) is None


def expected_stages_for_stop(name: str, stop: StopConfig) -> int | None:
    from trimllm.stop import expected_stages as by_name

    return by_name(name, 1, Plan("m", "llama", 30), stop, "block", 0)
