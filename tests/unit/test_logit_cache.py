"""The teacher-logit cache (trimllm.logit_cache): what it stores equals the teacher's own top-k at every position of a
left-padded batch, the KL over top-k + tail equals a hand computation over k + 1 outcomes (and the full KL when k
is the vocabulary), another teacher / data / k gets another cache, a killed build resumes without redoing its
finished chunks, and a distiller reading the cache gives the live teacher's loss."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from tests.conftest import build_tiny, tiny_tokenizer
from trimllm import logit_cache
from trimllm.distill import Distiller, kept_columns
from trimllm.logit_cache import LogitCache, Targets, build, topk_kl_sum
from trimllm.sft import SFTCollator
from trimllm.surgery import drop_blocks

EXAMPLES = [{"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, -100, 9, 10]},
            {"input_ids": [11, 12, 13], "labels": [-100, -100, 13]},
            {"input_ids": [20, 21, 22, 23, 24], "labels": [-100, -100, -100, 23, 24]}]


def quiet(*_):
    pass


def test_cached_rows_are_the_teachers_top_k_at_every_position(tmp_path):
    teacher = build_tiny("qwen2")
    cache = build(teacher, tiny_tokenizer(), EXAMPLES, tmp_path, k=5, batch_size=2, log=quiet)
    for example in EXAMPLES:
        ids = example["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(teacher(torch.tensor([ids])).logits[0].float(), -1)
        top, top_ids = logp.topk(5, dim=-1)
        r_ids, r_logp, r_tail = cache.rows(ids)
        assert r_ids.shape == (len(ids) - 1, 5)  # positions 0 .. n-2 (the last predicts nothing)
        assert (torch.from_numpy(r_ids.astype("int64")) == top_ids[:-1]).all()
        torch.testing.assert_close(torch.from_numpy(r_logp.astype("float32")), top[:-1], atol=2e-3, rtol=1e-3)
        tail = torch.log(1 - top[:-1].exp().sum(-1))
        torch.testing.assert_close(torch.from_numpy(r_tail.astype("float32")), tail, atol=5e-3, rtol=1e-3)
    assert cache.meta["examples"] == 3 and cache.meta["bytes"] > 0


def test_targets_line_up_with_a_left_padded_batch_and_its_answer_window(tmp_path):
    cache = build(build_tiny("llama"), tiny_tokenizer(), EXAMPLES, tmp_path, k=4, log=quiet)
    batch = SFTCollator(0, all_positions=True)(EXAMPLES)
    width = batch["input_ids"].shape[1]
    targets = cache.targets(batch["input_ids"], batch["attention_mask"], kept_columns(batch, width))
    for row, example in enumerate(EXAMPLES):
        n, pad = len(example["input_ids"]), width - len(example["input_ids"])
        expected = torch.from_numpy(cache.rows(example["input_ids"])[0].astype("int64"))
        assert (targets.ids[row, pad:-1] == expected).all()
        assert targets.valid[row].tolist() == [False] * pad + [True] * (n - 1) + [False]
    window = SFTCollator(0)(EXAMPLES)  # the answer window (logits_to_keep)
    keep = window["logits_to_keep"]
    targets = cache.targets(window["input_ids"], window["attention_mask"], kept_columns(window, keep))
    assert targets.ids.shape[1] == keep and not targets.valid[:, -1].any()  # the last column predicts nothing
    for row, example in enumerate(EXAMPLES):
        rows = cache.rows(example["input_ids"])[0]
        count = min(keep - 1, len(example["input_ids"]) - 1)
        assert (targets.ids[row, keep - 1 - count: keep - 1] == torch.from_numpy(rows[-count:].astype("int64"))).all()


def test_the_top_k_kl_with_a_tail_bucket_is_the_kl_over_k_plus_one_outcomes():
    torch.manual_seed(0)
    vocab, k = 9, 3
    student, teacher = torch.randn(1, 2, vocab), torch.randn(1, 2, vocab)
    p_t = torch.softmax(teacher.double(), -1)
    p_s = torch.softmax(student.double(), -1)
    top, ids = p_t.log().topk(k, -1)
    tail = torch.log(1 - top.exp().sum(-1))
    targets = Targets(ids, top.float(), tail.float(), torch.ones(1, 2, dtype=torch.bool))
    total, count = topk_kl_sum(student, targets, torch.tensor([[1, 1]]))
    expected = 0.0
    for pos in range(2):
        chosen = ids[0, pos].tolist()
        for v in chosen:
            expected += p_t[0, pos, v] * math.log(p_t[0, pos, v] / p_s[0, pos, v])
        rest_t = 1 - sum(p_t[0, pos, v] for v in chosen)
        rest_s = 1 - sum(p_s[0, pos, v] for v in chosen)
        expected += rest_t * math.log(rest_t / rest_s)
    assert int(count) == 2
    assert abs(float(total) - float(expected)) < 1e-5
    assert float(total) > 0.01  # the two distributions differ: the loss sees it


def test_with_k_the_whole_vocabulary_the_cached_loss_is_the_live_teachers(tmp_path):
    teacher = build_tiny("llama")
    student = copy.deepcopy(teacher)
    drop_blocks(student, [2])
    cache = build(teacher, tiny_tokenizer(), EXAMPLES, tmp_path, k=96, log=quiet)
    for tokens in ("all", "answer"):
        batch = SFTCollator(0, all_positions=tokens == "all")(EXAMPLES)
        with torch.no_grad():
            outputs = student(**batch)
            losses = [Distiller(source, 0.0, 1.0, tokens, 0.0).loss(batch, outputs.loss, outputs.logits, [], None, 1, 1)
                      for source in (teacher, cache)]
        assert float(losses[0]) > 1e-3
        torch.testing.assert_close(losses[1], losses[0], rtol=2e-3, atol=1e-4)  # float16 storage


def test_another_teacher_data_or_k_gets_another_cache(tmp_path):
    teacher, tokenizer = build_tiny("llama"), tiny_tokenizer()
    first = build(teacher, tokenizer, EXAMPLES, tmp_path, k=4, log=quiet).folder
    assert build(copy.deepcopy(teacher), tokenizer, EXAMPLES, tmp_path, k=4, log=quiet).folder == first  # reused
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3  # trained one step further: another teacher
    folders = {build(changed, tokenizer, EXAMPLES, tmp_path, k=4, log=quiet).folder,
               build(teacher, tokenizer, EXAMPLES[:2], tmp_path, k=4, log=quiet).folder,
               build(teacher, tokenizer, EXAMPLES, tmp_path, k=5, log=quiet).folder}
    assert first not in folders and len(folders) == 3
    with pytest.raises(KeyError, match="built from other training data"):
        LogitCache(first).rows([30, 31, 32])


def test_a_killed_build_resumes_at_its_first_unfinished_chunk(tmp_path, monkeypatch):
    teacher, tokenizer = build_tiny("qwen3"), tiny_tokenizer()
    monkeypatch.setattr(logit_cache, "CHUNK", 1)
    real, built = logit_cache._build_chunk, []

    def dies_at_chunk_2(teacher, examples, folder, index, *args):
        if index == 2 and not built.count("died"):
            built.append("died")
            raise KeyboardInterrupt  # killed mid-build
        built.append(index)
        return real(teacher, examples, folder, index, *args)

    monkeypatch.setattr(logit_cache, "_build_chunk", dies_at_chunk_2)
    with pytest.raises(KeyboardInterrupt):
        build(teacher, tokenizer, EXAMPLES, tmp_path, k=4, log=quiet)
    folder = next(tmp_path.iterdir())
    assert not (folder / "cache.json").exists()  # not complete: never read as a cache
    resumed = build(teacher, tokenizer, EXAMPLES, tmp_path, k=4, log=quiet)
    assert built == [0, 1, "died", 2]  # chunks 0 and 1 were not computed again
    clean = build(teacher, tokenizer, EXAMPLES, tmp_path / "clean", k=4, log=quiet)
    for example in EXAMPLES:
        for a, b in zip(resumed.rows(example["input_ids"]), clean.rows(example["input_ids"]), strict=True):
            assert (a == b).all()
    assert json.loads((folder / "cache.json").read_text())["chunks"] == 3


def test_sampled_columns_keep_the_answer_loss_and_draw_real_prompt_positions():
    torch.manual_seed(3)
    model = build_tiny("gemma3_text")
    examples = [EXAMPLES[0], EXAMPLES[2]]  # (the second has no prompt position outside the answer window)
    window = SFTCollator(0)(examples)
    sampled = SFTCollator(0, sampled=1)(examples)
    columns, width = sampled["logits_to_keep"], sampled["input_ids"].shape[1]
    keep = window["logits_to_keep"]
    assert columns.shape == (2, 1 + keep)
    short = SFTCollator(0, sampled=1)(EXAMPLES)  # the second row has no prompt column: it keeps the last column
    assert short["logits_to_keep"][1, 0] == short["input_ids"].shape[1] - 1 and short["shift_labels"][1, 0] == -100
    for row, example in enumerate(examples):
        drawn = int(columns[row, 0])
        assert width - len(example["input_ids"]) <= drawn < width - keep  # a real prompt column
        assert columns[row, 1:].tolist() == list(range(width - keep, width))
    with torch.no_grad():
        torch.testing.assert_close(model(**sampled).loss, model(**window).loss)  # the same answer-only CE


def test_sampling_every_prompt_position_is_distillation_at_every_token(tmp_path):
    """``tokens: N`` with N at least every prompt position keeps every column: its loss is ``tokens: all``'s, for
    the live teacher and the cache alike; with fewer, the KL covers the drawn positions."""
    teacher = build_tiny("llama")
    student = copy.deepcopy(teacher)
    drop_blocks(student, [1])
    cache = build(teacher, tiny_tokenizer(), EXAMPLES, tmp_path, k=96, log=quiet)
    every = SFTCollator(0, all_positions=True)(EXAMPLES)
    with torch.no_grad():
        out = student(**every)
        reference = Distiller(teacher, 0.0, 1.0, "all", 0.0).loss(every, out.loss, out.logits, [], None, 1, 1)
        batch = SFTCollator(0, sampled=50)(EXAMPLES)
        out = student(**batch)
        for source in (teacher, cache):
            loss = Distiller(source, 0.0, 1.0, 50, 0.0).loss(batch, out.loss, out.logits, [], None, 1, 1)
            torch.testing.assert_close(loss, reference, rtol=2e-3, atol=1e-4)
        fewer = SFTCollator(0, sampled=1)(EXAMPLES)
        out = student(**fewer)
        live = Distiller(teacher, 0.0, 1.0, 1, 0.0).loss(fewer, out.loss, out.logits, [], None, 1, 1)
        cached = Distiller(cache, 0.0, 1.0, 1, 0.0).loss(fewer, out.loss, out.logits, [], None, 1, 1)
    torch.testing.assert_close(cached, live, rtol=2e-3, atol=1e-4)
    assert abs(float(live) - float(reference)) > 1e-4  # another set of positions, another loss
