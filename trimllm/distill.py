"""Distillation from an unpruned teacher while the pruned student trains (the ``distill`` recipe section).

Minitron (Muralidharan et al. 2024; Sreenivas et al. 2024): after depth pruning, forward KL on the teacher's logits
recovers far more than cross-entropy retraining, and the teacher should first be fine-tuned on the target data
("teacher correction") — which trimllm's stage 0 does: ``distill.teacher: stage0`` is the full-depth model as
fine-tuned there. The loss of a step is

    alpha * CE(gold answer) + (1 - alpha) * T^2 * KL(p_teacher(T) || p_student(T)) + hidden_weight * (1 - cos)

with the KL at the answer tokens (``tokens: answer``) or at every real position of prompt + answer (``tokens:
all``, the dense signal that teaches the remaining blocks what the removed ones did), and the optional cosine term
between the student's block outputs and the teacher's at the kept blocks' original indices (Minitron's depth
pruning term). The teacher runs in eval mode without gradients on the same batch, in the same step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from trimllm.architectures import get_layers, unwrap
from trimllm.layout import RunDir
from trimllm.sft import next_token_labels
from trimllm.surgery import get_plan


def kd_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
           temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` summed over the positions where ``mask`` is true, and their
    count. Logits are ``[batch, positions, vocab]`` at the same positions; the T^2 keeps the gradient's scale
    independent of T (Hinton et al. 2015)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_position = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    mask = mask.to(per_position.device)
    return (per_position * mask).sum() * temperature**2, mask.sum()


def block_pairs(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]]:
    """(student position, teacher position) of every kept block, matched by the base model's original index."""
    kept, teacher_plan = get_plan(student).kept, get_plan(teacher)
    return [(p, teacher_plan.position(orig)) for p, orig in enumerate(kept) if orig in teacher_plan.kept]


def hidden_sum(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], pairs: list[tuple[int, int]],
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``1 - cos`` between paired block outputs, summed over the real tokens of every pair, and the count."""
    mask = mask.bool()
    total = student_states[0].new_zeros((), dtype=torch.float32)
    for s, t in pairs:
        cos = F.cosine_similarity(student_states[s].float(), teacher_states[t].float().to(student_states[s].device), dim=-1)
        total = total + (1 - cos)[mask.to(cos.device)].sum()
    return total, mask.sum() * len(pairs)


@contextlib.contextmanager
def block_outputs(model: nn.Module) -> Iterator[list]:
    """Collect each block's output hidden state during a forward (with its graph), in block order."""
    outputs: list = []
    layers = get_layers(unwrap(model))
    handles = [layer.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
               for layer in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class Distiller:
    """The distillation part of a stage's loss, given the student's outputs on a batch. The teacher is a model run
    on the same batch, or a :class:`trimllm.logit_cache.LogitCache` of its top-k distributions (read, not run)."""

    def __init__(self, teacher, alpha: float, temperature: float, tokens: str, hidden_weight: float,
                 pairs: list[tuple[int, int]] = ()):
        from trimllm.logit_cache import LogitCache

        self.cache = teacher if isinstance(teacher, LogitCache) else None
        self.teacher = None if self.cache else teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.tokens, self.hidden_weight = alpha, temperature, tokens, hidden_weight
        self.pairs = list(pairs)  # (student block, teacher block) for the cosine term: see block_pairs
        self.teacher_seconds = 0.0  # the teacher's forwards, or the cache's reads, summed (what a step adds)

    def loss(self, inputs: dict, ce: torch.Tensor, student_logits: torch.Tensor, student_states: list,
             num_items: torch.Tensor | None, accumulation: int, world: int) -> torch.Tensor:
        """``ce`` is the model's own loss (normalised by ``num_items`` and scaled by ``world`` like the Trainer's);
        the KL at answer tokens is normalised the same way, the dense KL and the cosine term per micro-batch."""
        attention, columns = inputs["attention_mask"], kept_columns(inputs, student_logits.shape[1])
        if self.tokens == "answer":
            mask = next_labels(inputs, student_logits.shape[1]) != -100
        else:  # every kept real position that predicts a real token
            successor = (columns + 1).clamp(max=attention.shape[1] - 1)
            mask = (attention.gather(1, columns) * attention.gather(1, successor)).bool() & (columns + 1 < attention.shape[1])
        total, count, teacher_states = self._kl(inputs, student_logits, mask, columns)
        if self.tokens == "answer":
            kd = total / (num_items if num_items is not None else count) * world
        else:
            kd = total / count.clamp(min=1) / accumulation
        loss = self.alpha * ce + (1 - self.alpha) * kd
        if self.hidden_weight:
            total, count = hidden_sum(student_states, teacher_states, self.pairs, attention)
            loss = loss + self.hidden_weight * total / count.clamp(min=1) / accumulation
        return loss

    def _kl(self, inputs: dict, student_logits: torch.Tensor, mask: torch.Tensor, columns: torch.Tensor):
        """The KL summed over ``mask``'s positions, their count, and the teacher's block outputs (live teacher)."""
        started = time.perf_counter()
        if self.cache is not None:
            from trimllm.logit_cache import topk_kl_sum

            targets = self.cache.targets(inputs["input_ids"].cpu(), inputs["attention_mask"].cpu(), columns.cpu())
            self.teacher_seconds += time.perf_counter() - started
            return (*topk_kl_sum(student_logits, targets, mask), [])
        teacher_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
        with torch.no_grad(), block_outputs(self.teacher) as teacher_states:
            teacher_logits = self.teacher(**teacher_inputs, use_cache=False).logits
        if teacher_logits.is_cuda:
            torch.cuda.synchronize()
        self.teacher_seconds += time.perf_counter() - started
        total, count = kd_sum(student_logits, teacher_logits, mask, self.temperature)
        return total, count, teacher_states


def kept_columns(inputs: dict, positions: int) -> torch.Tensor:
    """``[batch, positions]``: the batch columns whose logits the model computed (the collator's
    ``logits_to_keep``: the last ``positions`` columns, every column, or a per-row tensor of columns)."""
    keep = inputs.get("logits_to_keep")
    if isinstance(keep, torch.Tensor):
        return keep
    batch, width = inputs["input_ids"].shape
    return torch.arange(width - positions, width, device=inputs["input_ids"].device).expand(batch, positions)


def next_labels(inputs: dict, positions: int) -> torch.Tensor:
    """``[batch, positions]``: the label each kept column predicts (-100: none), as the model's loss pairs them."""
    if "shift_labels" in inputs:
        return inputs["shift_labels"]
    return next_token_labels(inputs["labels"][:, -positions:])


def teacher_source(teacher: str, stage: int, out, base: str):
    """Where the teacher of ``stage`` comes from: ``stage0`` = the run's own ``stage_00`` export (none for stage
    0, which trains it), ``base`` = the recipe's model, anything else a model path or spec."""
    if teacher == "stage0":
        return None if stage == 0 else RunDir(out).stage(0)
    return base if teacher == "base" else teacher


def load_teacher(source, student: nn.Module, dtype: str) -> nn.Module:
    """The teacher model, in eval mode, on the student's device.

    Raises:
        ValueError: its vocabulary differs from the student's (the KL compares distributions over one vocabulary).
    """
    from trimllm.modeling import load_model

    teacher, _ = load_model(source, dtype=dtype, device=str(next(student.parameters()).device))
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"distill.teacher {source} has a vocabulary of {teacher.config.vocab_size} tokens, the student "
                         f"{student.config.vocab_size}: distillation needs the same tokenizer; choose a teacher of the "
                         "student's family")
    return teacher.eval().requires_grad_(False)
