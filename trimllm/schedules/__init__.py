"""Schedules: which modules to drop at each stage. One file each in this folder, registered under its file name.

A schedule is a function ``(ctx: StageContext, **options) -> Decision``, registered with its
:class:`ScheduleFacts`. Stage 0 is the full-depth fine-tuning stage for the progressive schedules (its validation
accuracy is the reference for the accuracy floor); ``oneshot`` removes everything there instead, and ``none`` never
removes anything. The stop rules, the progress estimate and the recipe checks read the facts, never the name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from trimllm.registry import Registry

SCHEDULES: Registry = Registry("schedule", fixed=1)  # (ctx, **options)


@dataclass
class StageContext:
    """What a schedule may look at when deciding a stage."""

    stage: int
    model: nn.Module
    tokenizer: object
    calibration: object  # CalibrationSet
    recipe: object  # Recipe
    budget: int  # modules that may still be removed before the target is reached (granularity units)
    score: object  # callable(granularity, scorer=None) -> ScoreResult, bound to the recipe's scoring options
    first_scores: object = None  # the ScoreResult of the run's first scored stage (a fixed removal order), if any


@dataclass(frozen=True)
class ScheduleFacts:
    """What a schedule declares when it registers (``@SCHEDULES.register(facts=ScheduleFacts(...))``)."""

    removes: bool = True  # it removes modules at all (none: no): it needs a stop rule
    full_depth_stage0: bool = True  # stage 0 fine-tunes the full-depth model, later stages remove (a stage0 teacher)
    stages: int | None = None  # the stages of every run when fixed (oneshot: 1, tuned_oneshot: 2); None: the budget's
    needs_target_fraction: bool = False  # it removes everything up to stop.target_fraction at once
    granularity: str | None = None  # the units it removes whatever scoring.granularity says (trimllm: halves)
    scorer: str | None = None  # the scorer it uses whatever scoring.scorer says (trimllm: task_accuracy)


def schedule_facts(name: str) -> ScheduleFacts:
    """The facts schedule ``name`` registered with (a schedule registered without any: the defaults)."""
    return SCHEDULES.facts(name) or ScheduleFacts()


@dataclass
class Decision:
    drop: list[str] = field(default_factory=list)  # candidates to remove now (block.i / attn.i / mlp.i)
    scores: object = None  # the ScoreResult behind the decision, if any
    last: bool = False  # no further stages


SCHEDULES.discover(__name__)

__all__ = ["SCHEDULES", "Decision", "ScheduleFacts", "StageContext", "schedule_facts"]
