"""Supervised fine-tuning data: examples, the length-grouped sampler and the collator (answer-only labels).

TrimLLM's setup: the prompt is the task's evaluation prompt, the target is the gold answer, and the loss is on the
answer tokens only.

Padding. A batch is as wide as its longest row, so random batches of prompts whose lengths vary a lot compute
mostly padding (SmolLM2's tokenizer, batch 8 of SciQ: 60 % of the positions; batch 16 of Financial PhraseBank:
38 %). :class:`LengthGroupedSampler` sorts the examples by length and cuts the sorted list into groups of one
optimizer step's examples, then draws the groups in a seeded random order (about 2 % padding on both). It is handed
to the Trainer in place of its random sampler (see :class:`trimllm.training.StageTrainer`); the collator pads each
batch to its own longest row.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from trimllm.multiple_choice import encode_item
from trimllm.prompts import MCItem


def sft_examples(tokenizer, items: list[MCItem], max_length: int) -> list[dict]:
    """``input_ids`` = prompt + gold answer; ``labels`` = -100 on the prompt, the answer tokens otherwise."""
    examples = []
    for item in items:
        context, continuations = encode_item(tokenizer, item, max_length)
        answer = continuations[item.gold]
        examples.append({"input_ids": context + answer, "labels": [-100] * len(context) + answer})
    return examples


class LengthGroupedSampler(Sampler[int]):
    """Indices in groups of ``group_size`` examples of about the same length, the groups in a random order.

    One epoch: a seeded permutation of the examples; its first ``len % group_size`` examples form the one short
    group, which comes last (so every other batch boundary falls on a group boundary); the rest are sorted by
    length (ties keep the permutation's random order) and cut into groups, which are shuffled. The generator is
    seeded by ``seed + epoch`` (the Trainer calls :meth:`set_epoch`), so the same seed gives the same batches and
    a resumed run, which skips the batches it already trained on, continues at the same position.

    ``group_size`` is one optimizer step's examples over all processes (per-device batch x processes x
    accumulation): the Trainer cuts consecutive per-device batches from this order and deals them to the ranks,
    so every rank's batch in a step comes from the same group (same lengths, no rank waits for a longer one).
    """

    def __init__(self, lengths: list[int], group_size: int, seed: int = 0):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.lengths, self.group_size, self.seed, self.epoch = list(lengths), group_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def groups(self) -> list[list[int]]:
        """This epoch's groups, in the order they are drawn."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        short = len(order) % self.group_size
        rest = sorted(order[short:], key=self.lengths.__getitem__)  # sorted() is stable: ties stay random
        groups = [rest[i : i + self.group_size] for i in range(0, len(rest), self.group_size)]
        shuffled = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        return shuffled + ([order[:short]] if short else [])

    def __iter__(self) -> Iterator[int]:
        return (index for group in self.groups() for index in group)


class SFTCollator:
    """Left-pads a list of examples into tensors.

    Left padding puts every answer at the end of its row, so the LM head only needs the last
    ``longest answer + 1`` positions (``logits_to_keep``): the loss is on answer tokens only, and computing
    vocabulary logits for the prompt would be wasted work (a large share of a small model's compute: SmolLM2's
    LM head is 28M of its 135M parameters). Position ids count from the first real token, so a left-padded row
    gives the same logits as the row alone.

    ``labels`` are cut to the same last positions (-100 on the prompt), so the model's own causal-LM loss (shift
    by one inside the window) is the answer-only loss, and the Trainer's ``num_items_in_batch`` divides it by the
    answer tokens of the whole accumulated (and, distributed, global) batch.

    With ``sampled = N`` (distillation at the answer tokens plus N prompt positions: ``distill.tokens: N``) the
    logits are kept at the answer window and at N prompt positions per row drawn at random for every batch:
    ``logits_to_keep`` is then a ``[batch, N + window]`` tensor of columns (transformers' per-row form), and
    ``shift_labels`` holds the token each kept column predicts (-100 off the answer), which the model's loss and
    the Trainer's token count read in place of shifting ``labels``.
    """

    def __init__(self, pad_id: int, all_positions: bool = False, sampled: int = 0):
        self.pad_id = pad_id
        self.all_positions = all_positions  # logits at every position (distillation at all tokens)
        self.sampled = sampled  # logits at the answer window + this many random prompt positions per row

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        answer = 1
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, width - n:] = torch.tensor(f["input_ids"])
            labels[row, width - n:] = torch.tensor(f["labels"])
            mask[row, width - n:] = 1
            # a row of distill.corpus text has no label (KL only): it widens no answer window
            answer = max(answer, n - next((i for i, t in enumerate(f["labels"]) if t != -100), n))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        batch = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if self.all_positions:
            return {**batch, "labels": labels}
        if self.sampled:
            return {**batch, **self._sampled_columns(mask, labels, answer)}
        return {**batch, "labels": labels[:, width - answer - 1:], "logits_to_keep": answer + 1}

    def _sampled_columns(self, mask: torch.Tensor, labels: torch.Tensor, answer: int) -> dict:
        """Per row: ``sampled`` random real columns before the answer window (all of them if it has fewer), then the
        window; each kept column's next-token label. A row with fewer fills its share with the last column, which
        predicts nothing (no label, no KL), so every row keeps as many columns."""
        width = mask.shape[1]
        window = torch.arange(width - answer - 1, width)
        prompt = [torch.arange(width - answer - 1)[mask[row, : width - answer - 1].bool()] for row in range(len(mask))]
        n = min(self.sampled, max(len(p) for p in prompt))
        drawn = [p[torch.randperm(len(p))[:n]].sort().values for p in prompt]
        columns = torch.stack([torch.cat([torch.full((n - len(d),), width - 1), d, window]) for d in drawn])
        shift = next_token_labels(labels).gather(1, columns)
        return {"labels": shift, "shift_labels": shift, "logits_to_keep": columns}


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label each column predicts (the next column's; -100 for the last), as a causal LM's loss pairs them."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
