"""Length-grouped training batches: one epoch covers every example once, batches carry little padding, the order is
random but seeded, and the Trainer's own dataloader uses the grouping (or not, with ``train.group_by_length``)."""

from __future__ import annotations

import random

import pytest

from tests.conftest import build_tiny, tiny_tokenizer
from trimllm.config import Recipe
from trimllm.sft import LengthGroupedSampler, SFTCollator, pad_id
from trimllm.training import StageTrainer, training_arguments

# A length mix like SciQ's: many short prompts, a long tail (support paragraphs).
_rng = random.Random(0)
LENGTHS = [_rng.randint(20, 60) if _rng.random() < 0.7 else _rng.randint(150, 400) for _ in range(1003)]


def padded_share(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for batch in batches for i in batch)
    computed = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - real / computed


def batches_of(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_one_epoch_covers_every_example_once_in_low_padding_batches():
    sampler = LengthGroupedSampler(LENGTHS, group_size=8, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(LENGTHS)))
    grouped = batches_of(order, 8)
    random_order = random.Random(3).sample(range(len(LENGTHS)), len(LENGTHS))
    assert padded_share(batches_of(random_order, 8), LENGTHS) > 0.3
    assert padded_share(grouped[:-1], LENGTHS) < 0.05  # every full group
    spans = sorted((min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in grouped[:-1])
    assert all(high <= next_low for (_, high), (next_low, _) in zip(spans, spans[1:], strict=False))  # sorted runs
    assert len(grouped[-1]) == len(LENGTHS) % 8  # the one short group comes last, so boundaries stay aligned


def test_same_seed_same_batches_and_the_groups_come_in_random_order():
    first = list(LengthGroupedSampler(LENGTHS, 8, seed=3))
    assert first == list(LengthGroupedSampler(LENGTHS, 8, seed=3))
    assert first != list(LengthGroupedSampler(LENGTHS, 8, seed=4))
    later = LengthGroupedSampler(LENGTHS, 8, seed=3)
    later.set_epoch(1)
    assert list(later) != first and sorted(later) == sorted(first)
    maxima = [max(LENGTHS[i] for i in batch) for batch in batches_of(first, 8)[:-1]]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)  # no long-to-short curriculum


def test_group_size_must_be_positive():
    with pytest.raises(ValueError, match="group_size"):
        LengthGroupedSampler(LENGTHS, 0)


@pytest.mark.parametrize("grouped", [True, False])
def test_the_trainer_dataloader_uses_the_grouping(tmp_path, grouped):
    tokenizer = tiny_tokenizer()
    examples = [{"input_ids": [5] * n, "labels": [-100] * (n - 1) + [5]} for n in LENGTHS]
    recipe = Recipe()
    recipe.train.batch_size, recipe.train.grad_accum, recipe.train.group_by_length = 4, 2, grouped
    trainer = StageTrainer(model=build_tiny("llama"), args=training_arguments(recipe, tmp_path, 0),
                           train_dataset=examples, data_collator=SFTCollator(pad_id(tokenizer)),
                           group_by_length=grouped)
    batches = list(trainer.get_train_dataloader())
    assert sum(int(b["attention_mask"].sum()) for b in batches) == sum(LENGTHS)  # every example once
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    computed = sum(b["attention_mask"].numel() for b in batches)
    assert (1 - real / computed < 0.08) == grouped


def test_validation_outcomes_come_back_in_item_order():
    from trimllm.multiple_choice import mc_accuracy, mc_correct
    from trimllm.scoring import CalibrationSet

    model, tokenizer = build_tiny("qwen2"), tiny_tokenizer()
    items = CalibrationSet.from_dataset("sciq", 12).items  # batched longest first, reported in the given order
    outcomes = mc_correct(model, tokenizer, items, batch_size=4, max_length=128)
    one_by_one = [mc_correct(model, tokenizer, [item], batch_size=1, max_length=128)[0] for item in items]
    assert 0 < sum(outcomes) < len(items)  # a mix, so that the order is visible
    assert outcomes == one_by_one
    assert mc_accuracy(model, tokenizer, items, 4, 128) == sum(outcomes) / len(items)
