"""The arithmetic of one stage's training, in one pure function: how many optimizer steps, at which learning rate,
with which adapter, from which seed, and where Progressive Layer Dropping's clock stands.

A stage trains ``train.steps_per_stage`` steps, except stage 0 (``train.stage0_steps``: 0 = the model given is
already tuned) and the stage after the last removal (``train.final_stage_steps``, the recovery or "healing" of
ShortGPT and Gromov et al. 2024). A pruned model (one that has lost modules) trains at ``pruned.lr`` with a
``pruned.r`` / ``pruned.alpha`` adapter (or ``pruned.method``, e.g. ``full``) where set (study v2: rank 64 at 3x
the learning rate). PLD's keep
probability theta(t) decays over the whole run (Zhang & He 2020), so a stage's clock starts at the optimizer steps
its earlier stages took, as recorded, not at ``stage x steps_per_stage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trimllm.config import Recipe
from trimllm.records import StageRecord


@dataclass(frozen=True)
class StageSpec:
    """What one stage's training is, computed by :func:`stage_spec` before it trains."""

    stage: int
    steps: int  # optimizer steps (0: the stage does not train)
    lr: float
    lora_r: int
    lora_alpha: int
    seed: int  # train.seed + stage: the adapters' initial weights, the data order, PLD's gates
    pld_offset: int  # optimizer steps of the earlier stages: where PLD's theta(t) continues
    pruned: bool  # the model has lost modules (the pruned adapter and learning rate apply)
    method: str = "lora"  # the training method (lora.method, or pruned.method for a pruned model)


@dataclass(frozen=True)
class StageFiles:
    """Where one stage's training writes."""

    work_dir: Path  # the Trainer's checkpoints (trimllm.layout.RunDir.trainer)
    metrics: Path  # the run's metrics.jsonl: a line per logged step
    tensorboard: Path | None = None  # a TensorBoard tracker's logs (train.report_to); None: under work_dir
    resume: bool = False  # continue from the newest complete checkpoint in work_dir


def stage_steps(recipe: Recipe, stage: int, last_removal: bool) -> int:
    """Training steps of a stage: ``train.stage0_steps`` for stage 0 and ``train.final_stage_steps`` for the stage
    whose removal reaches the target (``last_removal``), where set; ``train.steps_per_stage`` otherwise."""
    cfg = recipe.train
    if stage == 0 and cfg.stage0_steps is not None:
        return cfg.stage0_steps
    return cfg.final_stage_steps if cfg.final_stage_steps and last_removal else cfg.steps_per_stage


def recorded_steps(recipe: Recipe, record: StageRecord) -> int:
    """The optimizer steps a completed stage took: as recorded, or (a run file written before stages recorded
    them) as the recipe gave them to a stage that was not the last."""
    return record.steps if record.steps is not None else stage_steps(recipe, record.stage, last_removal=False)


def stage_spec(recipe: Recipe, stage: int, pruned: bool, last_removal: bool = False,
               earlier: list[StageRecord] = ()) -> StageSpec:
    """The training of ``stage`` of ``recipe`` for a model that is ``pruned`` (or not), whose removal reaches the
    target (``last_removal``), after the completed stages ``earlier``."""
    train, lora, over = recipe.train, recipe.lora, recipe.pruned
    r, alpha = (over.r or lora.r, over.alpha or lora.alpha) if pruned else (lora.r, lora.alpha)
    return StageSpec(
        stage=stage,
        steps=stage_steps(recipe, stage, last_removal),
        lr=over.lr if pruned and over.lr is not None else train.lr,
        lora_r=r,
        lora_alpha=alpha,
        seed=train.seed + stage,
        pld_offset=sum(recorded_steps(recipe, record) for record in earlier),
        pruned=pruned,
        method=over.method if pruned and over.method else lora.method,
    )
