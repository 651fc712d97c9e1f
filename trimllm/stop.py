"""Stop rules: how many more modules a run may remove, and whether it is done. Pure functions of the structural
plan, the recipe's ``stop`` section and the completed stages, so they are tested without training anything.

Units follow the granularity: blocks, or halves (attention / MLP) where a dropped block counts as two.
"""

from __future__ import annotations

from trimllm.config import StopConfig
from trimllm.plan import Plan
from trimllm.records import FinalChoice, StageRecord


def units(plan: Plan, granularity: str) -> tuple[int, int]:
    """(removed, total) in the granularity's units."""
    if granularity == "block":
        return len(plan.dropped), plan.num_layers
    return 2 * len(plan.dropped) + len(plan.bypassed_attention) + len(plan.bypassed_mlp), 2 * plan.num_layers


def budget(plan: Plan, stop: StopConfig, granularity: str) -> int:
    """How many more modules the target fraction and the module budget allow (the parameter target and the
    accuracy floor are checked after each stage). At least one unit of the model is always kept."""
    removed, total = units(plan, granularity)
    limits = []
    if stop.target_fraction is not None:
        limits.append(int(round(stop.target_fraction * total)) - removed)
    if stop.max_modules is not None:
        limits.append(stop.max_modules - len(plan.modules()["dropped"]))
    if not limits:  # only a parameter target or an accuracy floor: go on until it is reached or crossed
        limits.append(total - removed - 1)
    return max(0, min(min(limits), len(plan.kept) * (1 if granularity == "block" else 2) - 1))


def target_reached(plan: Plan, params: int, stop: StopConfig, granularity: str) -> bool:
    """The parameter target is met, or nothing more may be removed."""
    if stop.target_params_fraction is not None and params <= (1 - stop.target_params_fraction) * plan.params_original:
        return True
    return budget(plan, stop, granularity) == 0


def expected_stages(schedule: str, per_stage: int, plan: Plan, stop: StopConfig, granularity: str,
                    completed: int) -> int | None:
    """About how many stages the run will have in all, for its progress lines: the stages the schedule declares
    when it has a fixed number (:class:`trimllm.schedules.ScheduleFacts`), else stage 0 plus the removal stages the
    budget allows, ``per_stage`` a stage where the schedule takes that option (one otherwise). None when only a
    parameter target or the floor ends it."""
    from trimllm.schedules import SCHEDULES, schedule_facts

    fixed = schedule_facts(schedule).stages
    if fixed is not None:
        return fixed
    if stop.target_fraction is None and stop.max_modules is None:
        return None
    per = per_stage if "per_stage" in SCHEDULES.options(schedule) else 1
    return max(completed, 1) + -(-budget(plan, stop, granularity) // per)


def lowest_kept(reference: float, floor: float | None, max_drop: float | None = None) -> float | None:
    """The lowest validation metric a stage may have and still be chosen: ``floor`` x stage 0's (relative) and
    stage 0's less ``max_drop`` points (absolute, ``stop.max_drop``), whichever is higher; None without either."""
    bounds = [b for b in (floor and floor * reference, max_drop and reference - max_drop / 100) if b is not None]
    return max(bounds) if bounds else None


def below_floor(stages: list[StageRecord], floor: float | None, max_drop: float | None = None) -> bool:
    """The last stage's validation metric fell below what may be kept (:func:`lowest_kept`): no later stage can be
    chosen."""
    lowest = lowest_kept(stages[0].val_acc, floor, max_drop)
    return lowest is not None and len(stages) > 1 and stages[-1].val_acc < lowest


def is_last(stages: list[StageRecord], plan: Plan, params: int, stop: StopConfig, granularity: str,
            decided_last: bool) -> bool:
    """Whether the stage just completed ends the run: the schedule said so, a target is reached, or the floor
    is crossed."""
    return (decided_last or target_reached(plan, params, stop, granularity)
            or below_floor(stages, stop.accuracy_floor, stop.max_drop))


def choose_final(stages: list[StageRecord], floor: float | None, max_drop: float | None = None) -> FinalChoice:
    """The smallest stage whose validation metric meets the floor and the drop limit (the last stage without
    either)."""
    reference = stages[0].val_acc
    lowest = lowest_kept(reference, floor, max_drop)
    eligible = [s for s in stages if lowest is None or s.val_acc >= lowest] or [stages[0]]
    best = eligible[-1] if lowest is None else min(eligible, key=lambda s: (s.params, -s.val_acc))
    return FinalChoice(best.stage, best.dir, best.val_acc, floor, reference)
