"""A stage's decisions, with the recipe bound to the plug-ins: what the schedule removes (scored by the recipe's
scorer and options) and which blocks the freezing mode freezes. Each runs on rank 0 (see
:func:`trimllm.pipeline.decide`); the stop rules' budget comes from :mod:`trimllm.stop`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from trimllm import stop
from trimllm.config import Recipe
from trimllm.freezing import FreezeContext, blocks_to_freeze
from trimllm.schedules import SCHEDULES, Decision, StageContext, schedule_facts
from trimllm.scoring import CalibrationSet, ScoreResult, run_scorer, scorer_options
from trimllm.surgery import get_plan


@dataclass(frozen=True)
class Inputs:
    """What deciding reads: the recipe, the model as it is now, and the calibration set."""

    recipe: Recipe
    model: nn.Module
    tokenizer: object
    calibration: CalibrationSet
    first_scores: ScoreResult | None = None  # the run's first scored stage (a fixed removal order)


def schedule_decision(inputs: Inputs, stage: int) -> Decision:
    """The recipe's schedule, given the stage's context and its options (``schedule.options``)."""
    recipe = inputs.recipe
    budget = stop.budget(get_plan(inputs.model), recipe.stop, granularity(recipe))
    context = StageContext(stage, inputs.model, inputs.tokenizer, inputs.calibration, recipe, budget,
                           lambda units, scorer=None: score(inputs, units, scorer), inputs.first_scores)
    return SCHEDULES.get(recipe.schedule.name)(context, **schedule_options(recipe))


def schedule_options(recipe: Recipe) -> dict:
    """The options the recipe gives its schedule (``schedule.options``, defaults filled in); the checks refuse one
    the schedule does not take (:func:`trimllm.validation.load_recipe`)."""
    return dict(recipe.schedule.options)


def expected_stages(recipe: Recipe, model: nn.Module, completed: int) -> int | None:
    """About how many stages the run will have (its progress lines): :func:`trimllm.stop.expected_stages`."""
    per_stage = recipe.schedule.options.get("per_stage", 1)
    return stop.expected_stages(recipe.schedule.name, per_stage, get_plan(model), recipe.stop,
                                granularity(recipe), completed)


def frozen_blocks(inputs: Inputs, stage: int) -> list[int]:
    """Blocks to freeze this stage (original indices), by the recipe's freezing mode (:mod:`trimllm.freezing`)."""
    cfg, plan = inputs.recipe.freeze, get_plan(inputs.model)
    context = FreezeContext(stage, plan, int(round(cfg.fraction * len(plan.kept))), cfg.fraction,
                            lambda units: score(inputs, units))
    return blocks_to_freeze(cfg.mode, context)


def granularity(recipe: Recipe) -> str:
    """The units the stop rules count: the schedule's own (TrimLLM removes halves), else the recipe's."""
    return schedule_facts(recipe.schedule.name).granularity or recipe.scoring.granularity


def score(inputs: Inputs, units: str, scorer: str | None = None) -> ScoreResult:
    """Score the model's candidates (``units``: block or sublayer) with the recipe's scorer (or ``scorer``, a
    schedule's own) and the options under ``scoring.options`` that it takes."""
    recipe = inputs.recipe
    cfg, name = recipe.scoring, scorer or recipe.scoring.scorer
    return run_scorer(name, inputs.model, inputs.tokenizer, inputs.calibration, granularity=units,
                      batch_size=cfg.batch_size, max_length=recipe.data.max_length, seed=recipe.train.seed,
                      **scorer_options(name, **cfg.options))
