"""Scorers: a planted identity block ranks last, fast == naive scans, hooks are removed, no test leakage."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ARCHS, build_tiny, tiny_tokenizer
from trimllm.architectures import get_layers
from trimllm.data import load_side
from trimllm.multiple_choice import build_mc_batches, mc_inputs
from trimllm.prompts import MCItem
from trimllm.registry import UnknownNameError
from trimllm.scoring import SCORERS, CalibrationSet, count_hooks, list_candidates, run_scorer
from trimllm.surgery import bypass_attention, drop_blocks

CONTENT_SCORERS = ["task_accuracy", "calibration_loss", "block_influence", "angular", "taylor", "activation_norm",
                   "teacher_kl"]
PLANTED = 3


_PLANTED: dict = {}


def planted(model_type):
    """A tiny model trained to memorise a small calibration set, with block 3 an exact identity.

    Training makes every real block matter for exactly these examples, so removing one costs accuracy and loss,
    while removing the identity block changes nothing: every content-based scorer must rank it last.
    """
    if model_type not in _PLANTED:
        import random

        from trimllm.scoring.calibration import build_lm_batches

        model, tokenizer = build_tiny(model_type), tiny_tokenizer()
        layer = get_layers(model)[PLANTED]
        outputs = [layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight]
        with torch.no_grad():
            for weight in outputs:
                weight.zero_()
        rng = random.Random(0)
        word = lambda k: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(k))  # noqa: E731
        items = [MCItem(f"{word(10)} is", tuple(" " + word(3) for _ in range(3)), rng.randrange(3), str(i))
                 for i in range(8)]
        calibration = CalibrationSet("planted", items)
        trainable = [p for p in model.parameters() if all(p is not w for w in outputs)]
        optimizer = torch.optim.Adam(trainable, lr=1e-2)
        batch = build_lm_batches(tokenizer, calibration.texts(), batch_size=8)[0]
        torch.manual_seed(0)
        model.train()
        for _ in range(150):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
        model.eval().zero_grad(set_to_none=True)
        assert all(float(w.detach().abs().max()) == 0 for w in outputs)
        _PLANTED[model_type] = (model, calibration)
    model, calibration = _PLANTED[model_type]
    import copy

    return copy.deepcopy(model), calibration


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("scorer", CONTENT_SCORERS)
def test_planted_identity_block_ranks_least_important(model_type, scorer):
    model, calibration = planted(model_type)
    result = run_scorer(scorer, model, tiny_tokenizer(), calibration)
    assert len(result.scores) == 6 and all(torch.isfinite(torch.tensor(list(result.scores.values()))))
    assert result.least_important() == f"block.{PLANTED}", result.ranked()
    assert count_hooks(model) == 0
    if scorer == "task_accuracy":
        assert result.meta["base_acc"] == 1.0  # the memorised set: the test is not decided by ties


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "qwen2", "phi3"])
@pytest.mark.parametrize("scorer", ["task_accuracy", "calibration_loss"])
@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_fast_scan_equals_naive_scan(model_type, scorer, granularity):
    model, tokenizer = build_tiny(model_type), tiny_tokenizer()
    calibration = CalibrationSet.from_dataset("sciq", 6)
    fast = run_scorer(scorer, model, tokenizer, calibration, granularity=granularity, fast=True, max_length=160)
    naive = run_scorer(scorer, model, tokenizer, calibration, granularity=granularity, fast=False, max_length=160)
    assert fast.scores.keys() == naive.scores.keys()
    for candidate in fast.scores:
        assert fast.scores[candidate] == pytest.approx(naive.scores[candidate], abs=1e-5)
    assert fast.ranked()[0][0] == naive.ranked()[0][0]


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_teacher_kl_is_the_kl_of_whole_forwards_with_the_run_skipped(model_type):
    """The suffix re-run gives what two whole-model forwards give: KL(p_model || p_without), per labelled token,
    for one block, a run of n = 2 blocks, and a half."""
    from torch.nn import functional as F

    from trimllm.scoring.calibration import build_lm_batches
    from trimllm.scoring.candidates import skipping_all

    model, tokenizer = build_tiny(model_type), tiny_tokenizer()
    calibration = CalibrationSet.from_dataset("sciq", 4)
    single = run_scorer("teacher_kl", model, tokenizer, calibration, max_length=128).scores
    halves = run_scorer("teacher_kl", model, tokenizer, calibration, granularity="sublayer", max_length=128).scores
    runs = run_scorer("teacher_kl", model, tokenizer, calibration, n=2, max_length=128).scores
    batch = build_lm_batches(tokenizer, calibration.texts(), 8, 128)[0]
    keep = batch["labels"][:, 1:] != -100

    def log_probs(skip: list[str]):
        with torch.no_grad(), skipping_all(model, skip):
            return F.log_softmax(model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[:, :-1][keep], -1)

    base = log_probs([])
    for candidates, score in ((["block.2"], single["block.2"]), (["mlp.4"], halves["mlp.4"]),
                              (["block.1", "block.2"], runs["block.1"]), (["block.5"], runs["block.5"])):
        without = log_probs(candidates)
        expected = float((base.exp() * (base - without)).sum()) / int(keep.sum())
        assert score == pytest.approx(expected, rel=1e-4, abs=1e-6), candidates
    assert runs["block.1"] > 0 and single["block.1"] > 0


def test_packed_rows_give_the_same_choice_logliks_as_separate_rows():
    from trimllm.multiple_choice import choice_loglik
    from trimllm.scoring.forward import capture_calls

    model, tokenizer = build_tiny("gemma3_text"), tiny_tokenizer()
    items = CalibrationSet.from_dataset("financial_phrasebank", 4).items
    values = []
    for pack in (True, False):
        batch = build_mc_batches(tokenizer, items, batch_size=64, pack=pack, max_length=200)[0]
        _, normed = capture_calls(model, **mc_inputs(model, batch))
        values.append(choice_loglik(model, batch, normed))
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("scorer", sorted(["random", "depth", *CONTENT_SCORERS]))
def test_sublayer_candidates_and_no_hooks_left(scorer):
    model, tokenizer = build_tiny("qwen3"), tiny_tokenizer()
    drop_blocks(model, [1])
    bypass_attention(model, [4])
    result = run_scorer(scorer, model, tokenizer, CalibrationSet.from_dataset("sciq", 4), granularity="sublayer",
                        max_length=128)
    expected = list_candidates(model, "sublayer")
    assert sorted(result.scores) == sorted(expected) and "attn.4" not in expected and "mlp.1" not in expected
    assert count_hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_depth_and_random_baselines():
    model, tokenizer = build_tiny("llama"), tiny_tokenizer()
    calibration = CalibrationSet.from_dataset("sciq", 2)
    depth = run_scorer("depth", model, tokenizer, calibration)
    assert [c for c, _ in depth.ranked()] == [f"block.{i}" for i in range(5, -1, -1)]
    first = run_scorer("random", model, tokenizer, calibration, seed=1).scores
    assert first == run_scorer("random", model, tokenizer, calibration, seed=1).scores
    assert first != run_scorer("random", model, tokenizer, calibration, seed=2).scores


def test_proxy_preselection_scans_only_k():
    model, tokenizer = build_tiny("llama"), tiny_tokenizer()
    calibration = CalibrationSet.from_dataset("sciq", 4)
    result = run_scorer("task_accuracy", model, tokenizer, calibration, proxy="block_influence", proxy_k=2,
                        max_length=128)
    proxy = run_scorer("block_influence", model, tokenizer, calibration, max_length=128)
    full = run_scorer("task_accuracy", model, tokenizer, calibration, max_length=128)
    # the k the proxy ranks least important are the ones scanned, and scanned exactly
    assert result.meta["scanned"] == [c for c, _ in proxy.ranked()[:2]]
    assert set(result.meta["acc_without"]) == set(result.meta["scanned"])
    for c in result.meta["scanned"]:
        assert result.meta["acc_without"][c] == full.meta["acc_without"][c]
    assert {c for c, _ in result.ranked()[:2]} == set(result.meta["scanned"])


def test_calibration_excludes_test_items():
    for name in ("sciq", "financial_phrasebank", "medmcqa", "legalbench"):
        calibration = CalibrationSet.from_dataset(name, 64, seed=5)
        test_ids = {r["_uid"] for r in load_side(name, "test")}
        assert len(set(calibration.uids)) == 64 and not set(calibration.uids) & test_ids


def test_every_registered_scorer_is_tested_here():
    assert sorted(["random", "depth", *CONTENT_SCORERS]) == sorted(SCORERS.names())


def test_unknown_scorer_suggests_one():
    with pytest.raises(UnknownNameError, match="Did you mean 'taylor'"):
        SCORERS.get("tailor")


def test_task_accuracy_proxy_scans_a_subset_then_k_exactly():
    model, tokenizer = build_tiny("qwen2"), tiny_tokenizer()
    calibration = CalibrationSet.from_dataset("sciq", 8)
    full = run_scorer("task_accuracy", model, tokenizer, calibration, max_length=128)
    subset = run_scorer("task_accuracy", model, tokenizer, CalibrationSet("sciq", calibration.items[:2]), max_length=128)
    proxied = run_scorer("task_accuracy", model, tokenizer, calibration, proxy="task_accuracy", proxy_k=3,
                         proxy_fraction=0.25, max_length=128)
    shortlist = [c for c, _ in subset.ranked()[:3]]
    assert proxied.meta["scanned"] == shortlist  # the subset scan picked the short list
    for c in shortlist:  # ... which is then scored exactly, on every question (the activation-norm tie-breaker,
        # below 0.5/N * 1e-3, is normalized by the scanned candidates' mean norm, so it may differ slightly)
        assert proxied.meta["acc_without"][c] == full.meta["acc_without"][c]
        # the first questions' counts are reused, not re-scanned: the sums still equal the full scan's
        assert proxied.meta["gold_ll_without"][c] == pytest.approx(full.meta["gold_ll_without"][c], rel=1e-5)
        assert proxied.scores[c] == pytest.approx(full.scores[c], abs=0.5 / 8 * 1e-3)
    assert [c for c, _ in proxied.ranked()[3:]] == [c for c, _ in subset.ranked()[3:]]
