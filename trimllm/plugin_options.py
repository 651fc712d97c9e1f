"""A recipe's plug-in options (``schedule.options``, ``scoring.options``): each plug-in's keyword parameters, whose
defaults live once, in its signature, and whose checks it registers with its registry (:mod:`trimllm.registry`).
Filled in before a run so that resolved.yaml names what runs; an option the plug-in does not take is refused.
"""

from __future__ import annotations

from trimllm.config import Recipe


def resolve_defaults(recipe: Recipe) -> Recipe:
    """Fill in the options the schedule and the scorer take with their defaults (from the plug-in's signature, where
    each lives once), so that resolved.yaml names what runs and a run saved before a default changes is told so."""
    from trimllm.schedules import SCHEDULES
    from trimllm.scoring import SCORERS, SETTINGS

    schedule, scorer = recipe.schedule, scoring_plugin(recipe)
    if schedule.name in SCHEDULES and isinstance(schedule.options, dict):
        schedule.options = {**SCHEDULES.defaults(schedule.name), **schedule.options}
    if scorer in SCORERS and isinstance(recipe.scoring.options, dict):
        defaults = {k: v for k, v in SCORERS.defaults(scorer).items() if k not in SETTINGS}
        recipe.scoring.options = {**defaults, **recipe.scoring.options}
    return recipe


def scoring_plugin(recipe: Recipe) -> str:
    """The scorer whose options ``scoring.options`` are: the schedule's own where it has one (TrimLLM's scan),
    else ``scoring.scorer``."""
    return scorer_of(recipe.schedule.name, recipe.scoring.scorer)


def scorer_of(schedule: str, scorer: str) -> str:
    """:func:`scoring_plugin` by names (a saved recipe's mapping has no typed recipe yet)."""
    from trimllm.schedules import SCHEDULES, schedule_facts

    return (schedule_facts(schedule).scorer if schedule in SCHEDULES else None) or scorer


def option_problems(recipe: Recipe) -> list[str]:
    """Each plug-in's options, checked by its registry: one it does not take is refused, never silently dropped."""
    from trimllm.schedules import SCHEDULES
    from trimllm.scoring import SCORERS, SETTINGS

    schedule, scorer = recipe.schedule, scoring_plugin(recipe)
    problems = []
    for where, options in (("schedule.options", schedule.options), ("scoring.options", recipe.scoring.options)):
        if not isinstance(options, dict):
            problems.append(f"{where} = {options!r} should be a mapping of option to value (e.g. {{per_stage: 2}})")
    if problems:
        return problems
    if schedule.name in SCHEDULES:
        hint = (f" (Options written for another schedule? schedule={schedule.name} on the command line replaces the "
                "whole schedule, with its own defaults.)")
        problems += [p + hint if "does not take" in p else p
                     for p in SCHEDULES.option_problems(schedule.name, schedule.options, "schedule.options")]
    if scorer in SCORERS:
        problems += SCORERS.option_problems(scorer, recipe.scoring.options, "scoring.options", passed=SETTINGS)
    return problems
