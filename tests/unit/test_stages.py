"""One stage's training spec (trimllm.stages.stage_spec): steps, learning rate, adapter, seed and the PLD clock,
from the recipe and the completed stages, as a pure function."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from trimllm.config import RecipeError
from trimllm.records import StageRecord
from trimllm.stages import stage_spec
from trimllm.validation import load_recipe


def record(stage: int, steps: int | None) -> StageRecord:
    return StageRecord(stage=stage, scorer=None, scores={}, dropped=[], removed=[], frozen=[], blocks_kept=30,
                       params=1, val_acc=0.5, seconds={}, tokens={}, peak_memory_mb=0.0, dir=f"stage_{stage:02d}",
                       last=False, steps=steps)


def recipe(*overrides: str):
    return load_recipe(ROOT / "recipes" / "smoke.yaml", ["train.steps_per_stage=5", "train.lr=1e-4", "train.seed=7",
                                                         *overrides])


def test_the_pld_clock_continues_from_the_steps_the_earlier_stages_took():
    """Stage 0 trains stage0_steps (3), stage 1 steps_per_stage (5): stage 2's clock starts at 8, not at the 10
    that ``stage x steps_per_stage`` gave (the offset before this module)."""
    r = recipe("train.stage0_steps=3", "train.final_stage_steps=11")
    earlier = [record(0, 3), record(1, 5)]
    spec = stage_spec(r, 2, pruned=True, last_removal=True, earlier=earlier)
    assert (spec.steps, spec.pld_offset) == (11, 8)
    assert stage_spec(r, 1, pruned=True, earlier=earlier[:1]).pld_offset == 3
    assert stage_spec(r, 0, pruned=False).pld_offset == 0
    # a stage that did not train (stage0_steps: 0, a model tuned before) moves the clock by nothing
    untrained = recipe("train.stage0_steps=0")
    assert stage_spec(untrained, 1, pruned=True, earlier=[record(0, 0)]).pld_offset == 0


def test_a_run_file_without_recorded_steps_counts_what_the_recipe_gave_those_stages():
    r = recipe("train.stage0_steps=3")
    assert stage_spec(r, 2, pruned=True, earlier=[record(0, None), record(1, None)]).pld_offset == 3 + 5


def test_steps_lr_adapter_and_seed_of_each_kind_of_stage():
    r = recipe("train.stage0_steps=3", "train.final_stage_steps=11", "lora.r=8", "lora.alpha=16", "lora.pruned_r=64",
               "lora.pruned_alpha=128", "train.pruned_lr=3e-4")
    full = stage_spec(r, 0, pruned=False)
    assert (full.steps, full.lr, full.lora_r, full.lora_alpha, full.seed, full.pruned) == (3, 1e-4, 8, 16, 7, False)
    middle = stage_spec(r, 1, pruned=True)
    assert (middle.steps, middle.lr, middle.lora_r, middle.lora_alpha, middle.seed) == (5, 3e-4, 64, 128, 8)
    last = stage_spec(r, 2, pruned=True, last_removal=True)
    assert (last.steps, last.seed) == (11, 9)
    plain = stage_spec(recipe(), 1, pruned=True)  # no pruned overrides: the fine-tune's adapter and rate
    assert (plain.lr, plain.lora_r, plain.lora_alpha) == (1e-4, recipe().lora.r, recipe().lora.alpha)
    # oneshot removes at stage 0: a pruned stage 0 trains with the pruned adapter
    assert stage_spec(r, 0, pruned=True).lora_r == 64


def test_a_pruned_model_can_train_in_full_while_the_fine_tune_keeps_its_adapter():
    r = recipe("pruned.method=full", "pruned.lr=5e-5")
    assert (stage_spec(r, 0, pruned=False).method, stage_spec(r, 1, pruned=True).method) == ("lora", "full")
    assert stage_spec(r, 1, pruned=True).lr == 5e-5 and stage_spec(recipe(), 1, pruned=True).method == "lora"
    with pytest.raises(RecipeError, match="pruned.method 'ful' unknown"):
        recipe("pruned.method=ful")
