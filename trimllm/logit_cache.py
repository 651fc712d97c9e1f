"""The teacher's next-token distributions over the training data, computed once and read by every later stage.

Distillation with a live teacher runs the full-depth model's forward in every step of every stage (0.55 of a
pruned student's CE step on SmolLM2-135M at 50 % removed: BENCHMARKS "Training throughput: distillation"). The
teacher is frozen, and trimllm trains on a fixed set of examples, so its outputs can be computed once. What is kept
per position is the sparse form of Minitron's logit distillation used by cached-KD work (e.g. Anshumann et al.
2025, "Sparse Logit Sampling"): the top-``k`` token ids with their log-probabilities, plus the log of the mass
outside them (the tail bucket), so the KL below is exact over the ``k + 1`` outcomes and needs no renormalisation.

Layout of a cache folder (one per teacher x tokenizer x examples x k; another teacher gets another folder)::

    <root>/<key>/chunk_0000.ids.npy    [positions, k] token ids (uint16 when the vocabulary fits, else int32)
                 chunk_0000.logp.npy   [positions, k] float16 log-probabilities, best first
                 chunk_0000.tail.npy   [positions]    float16 log of the probability outside the top k
                 chunk_0000.json       the chunk's examples: key, first row, rows (written after its arrays)
                 cache.json            what the cache is for and its size (written last: the cache is complete)

An example's rows are its positions ``0 .. n-2`` (position ``i`` predicts token ``i + 1``). Every file is written
through a temporary sibling and a rename, so a killed build resumes at the first chunk without its ``.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trimllm.atomic import temp_prefix, write_text_atomic

CHUNK = 128  # examples per chunk: the unit of resume


def example_key(ids) -> str:
    """The cache's key of an example: a hash of its token ids (the tokens it was built from)."""
    return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=12).hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's weights (by name, dtype and bytes): a teacher trained further is another teacher."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.blake2b(json.dumps(vocab).encode(), digest_size=16).hexdigest()


def cache_key(teacher: str, tokenizer: str, examples: list[dict], k: int) -> dict:
    """What a cache is valid for; its ``id`` names the cache's folder."""
    data = hashlib.blake2b(digest_size=16)
    for example in examples:
        data.update(example_key(example["input_ids"]).encode())
    key = {"teacher": teacher, "tokenizer": tokenizer, "data": data.hexdigest(), "k": k}
    key["id"] = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    return key


def _save_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(temp_prefix(path) + "0.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


@torch.no_grad()
def _teacher_rows(teacher, batch: list[list[int]], k: int, pad_id: int):
    """Top-k ids, their log-probabilities and the tail's log-mass at every position but the last of each example."""
    from trimllm.sft import SFTCollator

    device = next(teacher.parameters()).device
    # the batch exactly as training pads it: left padding, positions from the first real token
    padded = SFTCollator(pad_id, all_positions=True)([{"input_ids": ids, "labels": ids} for ids in batch])
    width = padded["input_ids"].shape[1]
    inputs = {k: padded[k].to(device) for k in ("input_ids", "attention_mask", "position_ids")}
    logits = teacher(**inputs, use_cache=False).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    top, ids = logp.topk(k, dim=-1)
    tail = log1mexp(torch.logsumexp(top, dim=-1))
    rows = []
    for row, example in enumerate(batch):
        span = slice(width - len(example), width - 1)
        rows.append((ids[row, span].cpu(), top[row, span].cpu(), tail[row, span].cpu()))
    return rows


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends (Maechler 2012); the tail's log-mass from the top-k's."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _build_chunk(teacher, examples: list[dict], folder: Path, index: int, k: int, pad_id: int, batch_size: int,
                 id_dtype) -> None:
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))  # little padding per batch
    rows: dict[int, tuple] = {}
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        results = _teacher_rows(teacher, [examples[i]["input_ids"] for i in chosen], k, pad_id)
        rows.update(zip(chosen, results, strict=True))
    name = f"chunk_{index:04d}"
    ids = np.concatenate([rows[i][0].numpy().astype(id_dtype) for i in range(len(examples))])
    _save_array(folder / f"{name}.ids.npy", ids)
    _save_array(folder / f"{name}.logp.npy", np.concatenate([rows[i][1].numpy() for i in range(len(examples))]).astype(np.float16))
    _save_array(folder / f"{name}.tail.npy", np.concatenate([rows[i][2].numpy() for i in range(len(examples))]).astype(np.float16))
    entries, first = [], 0
    for i, example in enumerate(examples):
        entries.append([example_key(example["input_ids"]), first, len(rows[i][0])])
        first += len(rows[i][0])
    write_text_atomic(folder / f"{name}.json", json.dumps(entries))


def build(teacher, tokenizer, examples: list[dict], root: Path, k: int = 64, batch_size: int = 8,
          pad_id: int = 0, log=print) -> LogitCache:
    """The cache of ``teacher`` over ``examples`` under ``root`` (built now, finished if a build was killed, or read
    as it is when complete). ``examples`` are SFT examples (``input_ids``); duplicates are stored once per chunk."""
    key = cache_key(model_fingerprint(teacher), tokenizer_fingerprint(tokenizer), examples, k)
    folder = Path(root) / key["id"]
    if (folder / "cache.json").is_file():
        return LogitCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = teacher.config.get_text_config().vocab_size
    id_dtype = np.uint16 if vocab <= 2**16 else np.int32
    started, chunks = time.perf_counter(), range(0, len(examples), CHUNK)
    was_training = teacher.training
    teacher.eval()
    for index, start in enumerate(chunks):
        if (folder / f"chunk_{index:04d}.json").is_file():
            continue  # built before the build was killed
        _build_chunk(teacher, examples[start:start + CHUNK], folder, index, k, pad_id, batch_size, id_dtype)
        log(f"teacher logits: chunk {index + 1}/{len(chunks)} cached ({time.perf_counter() - started:.0f} s)")
    teacher.train(was_training)
    size = sum(p.stat().st_size for p in folder.glob("chunk_*"))
    meta = {**key, "examples": len(examples), "chunks": len(chunks), "bytes": size,
            "build_seconds": round(time.perf_counter() - started, 2)}
    write_text_atomic(folder / "cache.json", json.dumps(meta, indent=1))
    return LogitCache(folder)


@dataclass
class Targets:
    """The cached teacher distribution at a batch's positions: ``ids``/``logp`` ``[batch, positions, k]``,
    ``tail`` ``[batch, positions]`` and ``valid`` (a real position with a cached row)."""

    ids: torch.Tensor
    logp: torch.Tensor
    tail: torch.Tensor
    valid: torch.Tensor


class LogitCache:
    """A complete cache folder, memory-mapped: :meth:`targets` gives a batch's rows."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "cache.json").read_text())
        self.k = self.meta["k"]
        self.arrays, self.entries = [], {}
        for index in range(self.meta["chunks"]):
            name = self.folder / f"chunk_{index:04d}"
            self.arrays.append(tuple(np.load(f"{name}.{part}.npy", mmap_mode="r") for part in ("ids", "logp", "tail")))
            for key, first, rows in json.loads(Path(f"{name}.json").read_text()):
                self.entries[key] = (index, first, rows)

    def rows(self, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The cached rows of the example whose token ids are ``ids``.

        Raises:
            KeyError: the example was not in the data the cache was built from.
        """
        key = example_key(ids)
        if key not in self.entries:
            raise KeyError(f"the teacher-logit cache {self.folder} has no example with these {len(ids)} tokens: it was "
                           "built from other training data (a cache is keyed by the exact token ids)")
        index, first, rows = self.entries[key]
        ids_, logp, tail = self.arrays[index]
        return ids_[first:first + rows], logp[first:first + rows], tail[first:first + rows]

    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, columns: torch.Tensor) -> Targets:
        """The teacher's rows at ``columns`` (``[batch, positions]``) of a left-padded batch: column ``c`` of a row
        with ``pad`` padding columns is its example's position ``c - pad``; columns with no cached row (padding,
        the last real token, which predicts nothing) are not ``valid``."""
        batch, width = input_ids.shape
        shape = columns.shape
        ids = torch.zeros(*shape, self.k, dtype=torch.long)
        logp = torch.zeros(*shape, self.k)
        tail = torch.zeros(shape)
        valid = torch.zeros(shape, dtype=torch.bool)
        for row in range(batch):
            real = input_ids[row][attention_mask[row].bool()].tolist()
            r_ids, r_logp, r_tail = self.rows(real)
            position = columns[row] - (width - len(real))
            has = (position >= 0) & (position < len(real) - 1)
            chosen = position[has].numpy()
            ids[row, has] = torch.from_numpy(r_ids[chosen].astype(np.int64))
            logp[row, has] = torch.from_numpy(r_logp[chosen].astype(np.float32))
            tail[row, has] = torch.from_numpy(r_tail[chosen].astype(np.float32))
            valid[row] = has
        return Targets(ids, logp, tail, valid)


def topk_kl_sum(student_logits: torch.Tensor, targets: Targets, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``KL(teacher || student)`` over the teacher's top-k tokens and one tail bucket (everything else), summed over
    the positions where ``mask`` (and the cache) says so, and their count. ``student_logits`` ``[batch, positions,
    vocab]`` at the targets' columns. The student's tail is ``1 - sum of its top-k-set probabilities``, so the
    KL is that of two distributions over k + 1 outcomes; it is 0 only when the student matches the teacher on the
    top k and on the remaining mass."""
    device = student_logits.device
    logits = student_logits.float()
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    student_top = logits.gather(-1, targets.ids.to(device)) - log_z
    student_tail = log1mexp(torch.logsumexp(student_top, dim=-1))
    teacher_top, teacher_tail = targets.logp.to(device), targets.tail.to(device)
    per_position = (teacher_top.exp() * (teacher_top - student_top)).sum(-1)
    per_position = per_position + teacher_tail.exp() * (teacher_tail - student_tail)
    keep = mask.to(device).bool() & targets.valid.to(device)
    return per_position[keep].sum(), keep.sum()
