"""Progressive Layer Dropping: the schedule against the paper's formula, identity in eval mode, exact identity of
a skipped block, 1/p scaling of a kept one, keep frequencies, and the answer-only training loss."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import ARCHS, build_tiny, tiny_tokenizer
from trimllm.architectures import get_layers
from trimllm.pld import ProgressiveLayerDrop, keep_probability, theta
from trimllm.sft import SFTCollator


def test_schedule_matches_the_formula():
    assert theta(0, 0.5, 0.001) == 1.0
    assert theta(1000, 0.5, 0.001) == pytest.approx(0.5 * math.exp(-1) + 0.5)
    assert theta(10**7, 0.5, 0.001) == pytest.approx(0.5)
    # p_l(t) = 1 - (l / L)(1 - theta(t)): the first block is kept most, the last one with probability theta
    assert keep_probability(1, 4, 0.5) == pytest.approx(1 - 0.25 * 0.5)
    assert keep_probability(4, 4, 0.5) == pytest.approx(0.5)
    assert [keep_probability(l, 4, 1.0) for l in range(1, 5)] == [1.0] * 4  # noqa: E741


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_mode_is_untouched(arch):
    model = build_tiny(arch)
    ids = torch.randint(4, 90, (2, 10))
    with torch.no_grad():
        expected = model(ids).logits
        with ProgressiveLayerDrop(model, theta_bar=0.1, gamma=1.0, step=100) as pld:
            got = model(ids).logits
    assert torch.equal(got, expected) and pld.kept == pld.skipped == []


def test_skipped_block_is_identity_and_kept_block_is_scaled():
    model = build_tiny("llama").train()
    layers = get_layers(model)
    x = torch.randn(1, 5, 32)
    position_embeddings = model.model.rotary_emb(x, torch.arange(5).unsqueeze(0))
    with torch.no_grad():
        full = layers[5](x, position_embeddings=position_embeddings)
        with ProgressiveLayerDrop(model, theta_bar=0.5, gamma=0.0) as pld:  # gamma 0: theta stays 1 -> all kept
            assert torch.equal(layers[5](x, position_embeddings=position_embeddings), full)
            pld.theta_bar, pld.gamma = 0.5, 1e9  # theta(t > 0) = 0.5: the last block is kept with p = 0.5
            pld.set_step(1)
            outs = [layers[5](x, position_embeddings=position_embeddings) for _ in range(40)]
    p = keep_probability(6, 6, 0.5)
    skipped = [o for o in outs if torch.equal(o, x)]
    scaled = [o for o in outs if not torch.equal(o, x)]
    assert skipped and scaled
    for out in scaled:
        torch.testing.assert_close(out, x + (full - x) / p)


def test_keep_frequencies_follow_the_schedule():
    model = build_tiny("qwen2").train()
    pld = ProgressiveLayerDrop(model, theta_bar=0.5, gamma=1e9)  # theta = 0.5 from step 1 on
    ids = torch.randint(4, 90, (1, 6))
    with torch.no_grad(), pld:
        for step in range(1, 401):
            pld.set_step(step)
            model(ids)
    counts = [pld.kept.count(i) / 400 for i in range(6)]
    for i, frequency in enumerate(counts):
        assert frequency == pytest.approx(keep_probability(i + 1, 6, 0.5), abs=0.08), (i, counts)
    assert "forward" not in get_layers(model)[0].__dict__  # detached


def test_same_step_same_gates():
    model = build_tiny("llama").train()
    ids = torch.randint(4, 90, (1, 6))
    draws = []
    for _ in range(2):
        with torch.no_grad(), ProgressiveLayerDrop(model, theta_bar=0.3, gamma=1e9, seed=7) as pld:
            pld.set_step(5)
            model(ids)
            draws.append(list(pld.skipped))
    assert draws[0] == draws[1]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_answer_loss_equals_the_full_loss_on_answer_tokens(arch):
    model = build_tiny(arch)
    tokenizer = tiny_tokenizer()
    examples = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
                {"input_ids": [11, 12, 13], "labels": [-100, -100, 13]}]
    batch = SFTCollator(tokenizer.pad_token_id)(examples)
    assert batch["logits_to_keep"] == 3
    with torch.no_grad():
        loss = model(**batch).loss  # transformers' own causal-LM loss on the collator's cut labels
        summed = model(**batch, num_items_in_batch=torch.tensor(6)).loss  # as the Trainer calls it: sum / count
        per_row = []
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]])
            logits = model(ids).logits[0, :-1]
            targets = torch.tensor(ex["labels"][1:])
            per_row.append(torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum"))
    torch.testing.assert_close(loss, sum(per_row) / 3)
    torch.testing.assert_close(summed, sum(per_row) / 6)  # e.g. the answer tokens of two accumulated batches
