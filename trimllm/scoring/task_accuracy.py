"""TrimLLM's calibration scan (Hu et al., 2024, "TrimLLM: Progressive layer dropping for domain-specific LLMs"):
bypass each candidate in turn and measure multiple-choice accuracy on a calibration set from the train side.

A candidate whose removal costs the most accuracy is the most important. Small calibration sets tie often, so
the score folds three keys into one float, each scaled below the resolution of the one before:

    score = (acc_base - acc_without)                       # steps of 1/N
          + 0.5/N * tanh(ll_base - ll_without)             # mean gold log-likelihood drop, |.| < 0.5/N
          + 0.5/N * 1e-3 * tanh(norm / mean norm)          # TrimLLM's tie-breaker: output activation norm

Exact scanning: ``fast=True`` packs each question's choices into one row and re-runs only the blocks from the
candidate on, applying the LM head at answer positions only; ``fast=False`` evaluates every (question, choice)
sequence through the whole model once per candidate, as lm-eval would. Both give the same scores up to float
rounding. With ``proxy=NAME`` and ``proxy_k=k``, only the k candidates the proxy ranks least important are
scanned exactly; the others are scored above every scanned one, in proxy order. The proxy is any scorer (e.g. the
one-pass ``block_influence``), or ``task_accuracy`` itself: every candidate is scanned on the first
``proxy_fraction`` of the questions and only the k lowest on the rest, their first-questions counts reused (one
round of successive halving, Jamieson & Talwalkar 2016). The same criterion throughout, and the short list's scores
are exactly the full scan's; the cost is about ``fraction + (1 - fraction) * k / candidates`` of a full scan.
"""

from __future__ import annotations

import math

import torch

from trimllm.architectures import final_norm
from trimllm.multiple_choice import (
    build_mc_batches,
    choice_loglik,
    mc_inputs,
    mc_outcome,
    sum_choice_logprobs,
)
from trimllm.scoring import SCORERS
from trimllm.scoring.activation_norm import activation_norms
from trimllm.scoring.candidates import skipping
from trimllm.scoring.forward import capture_calls, hidden_without


def _checks(options: dict) -> list[str]:
    k, proxy, fraction = options["proxy_k"], options["proxy"], options["proxy_fraction"]
    problems = []
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        problems.append(f"proxy_k = {k!r} must be >= 1 (null to scan every candidate)")
    if proxy not in SCORERS:
        problems.append(f"proxy {proxy!r} is not a scorer. Available: {', '.join(SCORERS.names())}")
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        problems.append(f"proxy_fraction = {fraction!r} must be in (0, 1] (the share of the questions the "
                        "task_accuracy proxy scans)")
    if not isinstance(options["fast"], bool):
        problems.append(f"fast = {options['fast']!r} must be true or false")
    return problems


@SCORERS.register(checks=_checks)
def task_accuracy(
    model, tokenizer, calibration, candidates, batch_size: int = 8, max_length: int = 1024, fast: bool = True,
    proxy: str = "block_influence", proxy_k: int | None = None, proxy_fraction: float = 0.25,
):
    items, texts = calibration.items, calibration.texts()

    def scan(subset, scanned):
        batches = build_mc_batches(tokenizer, subset, batch_size, pack=fast, max_length=max_length)
        return _scan(model, batches, scanned, fast)

    def scored(subset_texts, base, per):
        return _scores(model, tokenizer, subset_texts, base, per, batch_size, max_length)

    if proxy == "task_accuracy" and proxy_k and proxy_k < len(candidates):
        # Successive halving in one round: every candidate on the first questions, the k lowest on the rest too.
        # The short list's counts on the first questions are reused, so its scores are the exact full-set scores.
        m = max(1, round(proxy_fraction * len(items)))
        base, per = scan(items[:m], candidates)
        head = scored(texts[:m], base, per)
        proxy_order = sorted(head, key=head.get)
        scanned = proxy_order[:proxy_k]
        if m < len(items):
            rest_base, rest_per = scan(items[m:], scanned)
            base = [base[0] + rest_base[0], base[1] + rest_base[1]]
            per = {c: [per[c][0] + rest_per[c][0], per[c][1] + rest_per[c][1]] for c in scanned}
        else:
            per = {c: per[c] for c in scanned}
    else:
        scanned, proxy_order = _preselect(model, tokenizer, calibration, candidates, proxy, proxy_k, batch_size,
                                          max_length)
        base, per = scan(items, scanned)
    n = len(items)
    scores = scored(texts, base, per)
    top = max(scores.values())
    for rank, c in enumerate(c for c in proxy_order if c not in scores):
        scores[c] = top + 1.0 + rank  # not scanned: kept, more important than anything scanned
    meta = {
        "base_acc": base[0] / n,
        "acc_without": {c: per[c][0] / n for c in scanned},
        "gold_ll_without": {c: per[c][1] / n for c in scanned},
        "scanned": scanned,
        "fast": fast,
        "proxy": proxy,
    }
    return scores, meta


def _scores(model, tokenizer, texts, base, per, batch_size, max_length) -> dict[str, float]:
    """Each candidate's score from the outcomes ``per`` summed over the ``len(texts)`` questions."""
    n = len(texts)
    norms = activation_norms(model, tokenizer, texts, list(per), batch_size, max_length)
    mean_norm = sum(norms.values()) / len(norms) or 1.0
    scores = {}
    for c, (correct, loglik) in per.items():
        acc_drop = (base[0] - correct) / n
        ll_drop = (base[1] - loglik) / n
        scores[c] = acc_drop + 0.5 / n * math.tanh(ll_drop) + 0.5 / n * 1e-3 * math.tanh(norms[c] / mean_norm)
    return scores


def _preselect(model, tokenizer, calibration, candidates, proxy, proxy_k, batch_size, max_length):
    """The k candidates a one-pass proxy scorer ranks least important, and its whole order."""
    if not proxy or not proxy_k or proxy_k >= len(candidates):
        return list(candidates), list(candidates)
    from trimllm.scoring import run_scorer

    ranked = run_scorer(proxy, model, tokenizer, calibration, candidates, batch_size=batch_size,
                        max_length=max_length).ranked()
    order = [c for c, _ in ranked]
    return order[:proxy_k], order


@torch.no_grad()
def _scan(model, batches, candidates, fast: bool):
    """(correct, gold log-likelihood sum) for the base model and for each candidate skipped."""
    base = [0, 0.0]
    per = {c: [0, 0.0] for c in candidates}
    for batch in batches:
        inputs = mc_inputs(model, batch)
        if fast:
            calls, normed = capture_calls(model, **inputs)
            _add(base, mc_outcome(batch, choice_loglik(model, batch, normed)))
            rows, cols = batch.pred_rows.to(normed.device), batch.pred_cols.to(normed.device)
            for c in candidates:
                hidden = hidden_without(model, calls, c)
                at_targets = final_norm(model, hidden[rows, cols])
                _add(per[c], mc_outcome(batch, choice_loglik(model, batch, at_targets, at_targets=True)))
        else:
            _add(base, mc_outcome(batch, _full_loglik(model, batch, inputs)))
            for c in candidates:
                with skipping(model, c):
                    _add(per[c], mc_outcome(batch, _full_loglik(model, batch, inputs)))
    return base, per


def _full_loglik(model, batch, inputs) -> torch.Tensor:
    """Choice log-likelihoods from a whole-model forward (LM head on every position)."""
    logits = model(**inputs, use_cache=False).logits
    device = logits.device
    return sum_choice_logprobs(batch, logits[batch.pred_rows.to(device), batch.pred_cols.to(device)])


def _add(total: list, outcome: tuple[int, float]) -> None:
    total[0] += outcome[0]
    total[1] += outcome[1]
