"""Calibration data for scorers: the calibration set and its language-modelling batches (its multiple-choice rows
come from :mod:`trimllm.multiple_choice`).

Calibration examples always come from the train side of a data set (:func:`trimllm.data.train_side_splits`),
never from its test side.
"""

from __future__ import annotations

from dataclasses import dataclass

from trimllm.data import train_side_splits
from trimllm.prompts import MCItem, mc_item


@dataclass
class CalibrationSet:
    """Multiple-choice calibration items (and their ids, to prove they are not test items)."""

    dataset: str
    items: list[MCItem]
    seed: int = 0

    @classmethod
    def from_dataset(cls, name: str, n: int, seed: int = 0, n_validation: int = 0) -> CalibrationSet:
        """``n`` items from the train side of ``name``, after the first ``n_validation`` (kept for validation)."""
        records = train_side_splits(name, n_validation=n_validation, n_calibration=n, seed=seed)["calibration"]
        return cls(name, [mc_item(name, r) for r in records], seed)

    @property
    def uids(self) -> list[str]:
        return [item.uid for item in self.items]

    def texts(self) -> list[str]:
        """Context followed by the gold answer: the text for language-modelling scorers."""
        return [item.context + item.choices[item.gold] for item in self.items]


def build_lm_batches(tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 1024) -> list[dict]:
    """Right-padded language-modelling batches with ``labels`` (-100 on padding), texts batched longest first (less
    padding; the scorers sum over tokens, so the order does not change a score)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length).input_ids]
    texts = [texts[i] for i in sorted(range(len(texts)), key=lambda i: -lengths[i])]
    batches = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
            max_length=max_length, padding_side="right",
        )
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        batches.append({"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels})
    return batches
