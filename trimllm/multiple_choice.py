"""Multiple choice, as lm-eval scores it: encoding items into (optionally packed) rows, the log-likelihood of
each choice, and accuracy. Scoring (the ``task_accuracy`` scan), validation during training and the benchmarks
all use this one module.

Packing. lm-eval scores a k-way question as k sequences ``context + choice_j``, so the context is processed k
times. A packed row holds the context once followed by every choice, with position ids that restart after the
context for each choice and an attention mask in which a choice token sees the context and the earlier tokens
of its own choice only. Each choice's log-likelihood is then exactly what the unpacked sequence gives (up to
float rounding), for a fraction of the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trimllm.architectures import decoder, lm_logits
from trimllm.prompts import MCItem
from trimllm.surgery import unwrap


@dataclass
class MCBatch:
    """Rows of tokens plus the positions whose next-token log-probabilities make up each choice's score.

    The log-probability of ``target_ids[n]`` is read from the logits at ``(pred_rows[n], pred_cols[n])``, and
    added to choice ``target_choice[n]`` (a flat index over all choices of the batch).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor  # 0 = context, k = k-th choice of the row, -1 = padding
    pred_rows: torch.Tensor
    pred_cols: torch.Tensor
    target_ids: torch.Tensor
    target_choice: torch.Tensor
    item_choices: list[int] = field(default_factory=list)  # number of choices of each item, in order
    gold: list[int] = field(default_factory=list)  # gold choice of each item
    indices: list[int] = field(default_factory=list)  # each item's position in the list the batches were built from

    @property
    def n_choices(self) -> int:
        return sum(self.item_choices)


def encode_item(tokenizer, item: MCItem, max_length: int) -> tuple[list[int], list[list[int]]]:
    """Context and continuation token ids, split like lm-eval: continuation = enc(ctx + choice)[len(enc(ctx)):]."""
    context_ids = tokenizer(item.context).input_ids
    continuations = [tokenizer(item.context + choice).input_ids[len(context_ids) :] for choice in item.choices]
    longest = max(len(c) for c in continuations)
    if len(context_ids) + longest > max_length:  # keep the end of the context, as lm-eval truncates on the left
        context_ids = context_ids[-(max_length - longest) :]
    return context_ids, continuations


def build_mc_batches(
    tokenizer, items: list[MCItem], batch_size: int = 8, pack: bool = True, max_length: int = 1024
) -> list[MCBatch]:
    """Tokenize items into batches of about ``batch_size`` rows, never splitting an item across batches.

    ``pack=True`` gives one row per item (context once, then every choice); ``pack=False`` gives one row per
    (item, choice), as lm-eval does. Items are batched longest first, so that a batch holds rows of about the same
    length and computes little padding (lm-eval sorts its requests the same way); every consumer sums over items,
    so the order does not change a result.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    groups = []  # per item: its rows, each a list of segments (context first)
    for item in items:
        context, continuations = encode_item(tokenizer, item, max_length)
        groups.append([[context, *continuations]] if pack else [[context, c] for c in continuations])
    order = sorted(range(len(items)), key=lambda i: -max(sum(map(len, row)) for row in groups[i]))
    batches, current, current_items = [], [], []
    for index in order:
        if current and len(current) + len(groups[index]) > batch_size:
            batches.append(_collate(current, current_items, items, pad_id))
            current, current_items = [], []
        current += groups[index]
        current_items.append(index)
    if current:
        batches.append(_collate(current, current_items, items, pad_id))
    return batches


def _collate(rows: list[list[list[int]]], indices: list[int], all_items: list[MCItem], pad_id: int) -> MCBatch:
    items = [all_items[i] for i in indices]
    width = max(sum(len(s) for s in segments) for segments in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros_like(ids)
    seg = torch.full_like(ids, -1)
    pred_rows, pred_cols, targets, target_choice = [], [], [], []
    choice = 0  # flat choice index: rows list the items' choices in order
    for row, segments in enumerate(rows):
        context, continuations = segments[0], segments[1:]
        n = len(context)
        ids[row, :n] = torch.tensor(context)
        pos[row, :n] = torch.arange(n)
        seg[row, :n] = 0
        col = n
        for k, cont in enumerate(continuations, start=1):
            m = len(cont)
            ids[row, col : col + m] = torch.tensor(cont)
            pos[row, col : col + m] = torch.arange(n, n + m)
            seg[row, col : col + m] = k
            # token t of a choice is predicted at the previous position: the context's last token for t = 0
            pred_cols += [n - 1] + list(range(col, col + m - 1))
            pred_rows += [row] * m
            targets += cont
            target_choice += [choice] * m
            choice += 1
            col += m
    assert choice == sum(len(i.choices) for i in items)
    return MCBatch(
        input_ids=ids,
        position_ids=pos,
        segments=seg,
        pred_rows=torch.tensor(pred_rows),
        pred_cols=torch.tensor(pred_cols),
        target_ids=torch.tensor(targets),
        target_choice=torch.tensor(target_choice),
        item_choices=[len(i.choices) for i in items],
        gold=[i.gold for i in items],
        indices=indices,
    )


def packed_attention_mask(batch: MCBatch, config, dtype: torch.dtype) -> torch.Tensor | dict:
    """The 4D mask for a batch: causal within a segment, and every choice sees its row's context.

    Families that mix layer types (Gemma-3, Qwen sliding window) get a ``{layer_type: mask}`` dict, with the
    sliding window applied on position ids, which their forward accepts as-is. For the eager attention kernel the
    mask is additive (0 / dtype min), otherwise boolean (True = attend).
    """
    seg, pos = batch.segments, batch.position_ids
    q_seg, k_seg = seg[:, :, None], seg[:, None, :]
    width = seg.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()[None]
    allowed = causal & (k_seg >= 0) & (q_seg >= 0) & ((k_seg == q_seg) | (k_seg == 0))
    allowed |= torch.eye(width, dtype=torch.bool)[None] & (q_seg < 0)  # padding rows attend to themselves (no NaN)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        if window is not None and int(pos.max()) + 1 > window:
            raise ValueError(
                f"Rows of {int(pos.max()) + 1} positions exceed the {window}-token sliding window of a "
                "family without layer_types; score with pack=False or a smaller max_length."
            )
        return _as_mask(allowed, config, dtype)
    masks = {}
    for layer_type in set(layer_types):
        mask = allowed
        if layer_type == "sliding_attention" and window is not None:
            distance = pos[:, :, None] - pos[:, None, :]
            mask = allowed & ((distance < window) | (q_seg < 0))
        masks[layer_type] = _as_mask(mask, config, dtype)
    return masks


def _as_mask(allowed: torch.Tensor, config, dtype: torch.dtype) -> torch.Tensor:
    allowed = allowed[:, None]  # (batch, 1, query, key)
    if getattr(config, "_attn_implementation", None) == "eager":
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed


def mc_inputs(model: nn.Module, batch: MCBatch) -> dict:
    model = unwrap(model)
    device = next(model.parameters()).device
    mask = packed_attention_mask(batch, model.config, next(model.parameters()).dtype)
    mask = {k: v.to(device) for k, v in mask.items()} if isinstance(mask, dict) else mask.to(device)
    return {"input_ids": batch.input_ids.to(device), "position_ids": batch.position_ids.to(device), "attention_mask": mask}


def choice_loglik(model: nn.Module, batch: MCBatch, normed: torch.Tensor, at_targets: bool = False) -> torch.Tensor:
    """Summed log-probability of each choice (flat over the batch).

    Args:
        normed: final normed hidden states, either for all positions (``[rows, width, hidden]``) or already
            gathered at the prediction positions (``at_targets=True``, ``[n_targets, hidden]``).
    """
    if not at_targets:
        normed = normed[batch.pred_rows.to(normed.device), batch.pred_cols.to(normed.device)]
    return sum_choice_logprobs(batch, lm_logits(model, normed))


def sum_choice_logprobs(batch: MCBatch, logits_at_targets: torch.Tensor) -> torch.Tensor:
    """Add up each choice's token log-probabilities, given the logits at the prediction positions."""
    device = logits_at_targets.device
    logprobs = torch.log_softmax(logits_at_targets.float(), dim=-1)
    picked = logprobs.gather(1, batch.target_ids.to(device)[:, None])[:, 0]
    sums = torch.zeros(batch.n_choices, dtype=picked.dtype, device=device)
    return sums.index_add_(0, batch.target_choice.to(device), picked).cpu()


def mc_outcome(batch: MCBatch, loglik: torch.Tensor) -> tuple[int, float]:
    """Number of items whose highest-scoring choice is gold, and the sum of the gold choices' log-likelihoods."""
    correct, gold_ll = 0, 0.0
    for predicted, gold, scores in mc_predictions(batch, loglik):
        correct += int(predicted == gold)
        gold_ll += float(scores[gold])
    return correct, gold_ll


def mc_predictions(batch: MCBatch, loglik: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """Per item of the batch, in batch order: (predicted choice, gold choice, the choices' log-likelihoods);
    the prediction is lm-eval's ``acc`` rule, the choice of highest summed log-likelihood."""
    out, offset = [], 0
    for n, gold in zip(batch.item_choices, batch.gold, strict=True):
        scores = loglik[offset : offset + n]
        out.append((int(torch.argmax(scores)), gold, scores))
        offset += n
    return out



def mc_accuracy(model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 8, max_length: int = 512) -> float:
    """Multiple-choice accuracy with lm-eval's rule (highest summed log-likelihood), on packed rows."""
    return sum(mc_correct(model, tokenizer, items, batch_size, max_length)) / len(items)


def mc_correct(model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 8,
               max_length: int = 512) -> list[bool]:
    """Whether each item (in the order given) is answered right by lm-eval's rule, on packed rows: the per-item
    outcomes that a paired comparison of two models on the same items needs."""
    scores = mc_logliks(model, tokenizer, items, batch_size, max_length)
    return [int(torch.argmax(torch.tensor(s))) == item.gold for s, item in zip(scores, items, strict=True)]


@torch.no_grad()
def mc_logliks(model: nn.Module, tokenizer, items: list[MCItem], batch_size: int = 8,
               max_length: int = 512) -> list[list[float]]:
    """Each item's choices' summed log-likelihoods (items in the order given): what lm-eval's ``loglikelihood``
    requests return for ``context + choice``, computed with one forward per packed row (the context once).
    Contexts longer than ``max_length`` are cut on the left, as in training."""
    model.eval()
    scores: list[list[float]] = [[] for _ in items]
    for batch in build_mc_batches(tokenizer, items, batch_size, pack=True, max_length=max_length):
        normed = decoder(model)(**mc_inputs(model, batch), use_cache=False).last_hidden_state
        for index, (_, _, loglik) in zip(batch.indices, mc_predictions(batch, choice_loglik(model, batch, normed)),
                                         strict=True):
            scores[index] = loglik.tolist()
    return scores
