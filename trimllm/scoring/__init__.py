"""Contribution scorers: which blocks (or attention / MLP halves) matter least for a domain.

Every scorer has the same interface and direction: ``(model, tokenizer, calibration set, candidates)`` -> one
finite score per candidate, **higher = more important** (keep), lower = drop first. A scorer is one file with one
``@SCORERS.register`` line; :func:`run_scorer` times it, checks its output and checks that it left no hook behind.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field

from torch import nn

from trimllm.registry import Registry
from trimllm.scoring.calibration import CalibrationSet
from trimllm.scoring.candidates import list_candidates
from trimllm.surgery import unwrap

SCORERS: Registry = Registry("scorer")

_MODULES = ["task_accuracy", "calibration_loss", "block_influence", "angular", "taylor", "activation_norm",
            "random_order", "depth"]
for _name in _MODULES:
    importlib.import_module(f"trimllm.scoring.{_name}")


@dataclass
class ScoreResult:
    """Scores of one scorer: ``{candidate: score}`` (higher = more important) and metadata."""

    scorer: str
    scores: dict[str, float]
    meta: dict = field(default_factory=dict)

    def ranked(self) -> list[tuple[str, float]]:
        """Candidates from least to most important (the order in which to drop them)."""
        return sorted(self.scores.items(), key=lambda kv: kv[1])

    def least_important(self) -> str:
        return self.ranked()[0][0]

    def as_list(self) -> list[dict]:
        return [{"candidate": c, "score": s} for c, s in self.scores.items()]


def count_hooks(model: nn.Module) -> int:
    """Forward (pre-)hooks registered anywhere in the model; scorers must leave this unchanged."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def run_scorer(
    name: str,
    model: nn.Module,
    tokenizer,
    calibration: CalibrationSet,
    candidates: list[str] | None = None,
    granularity: str = "block",
    **options,
) -> ScoreResult:
    """Score ``candidates`` (default: every block or half present) with scorer ``name``.

    Raises:
        UnknownNameError: ``name`` is not a registered scorer (the message lists them).
        RuntimeError: the scorer broke its contract (missing / non-finite scores, hooks left behind).
    """
    scorer = SCORERS.get(name)
    model = unwrap(model)
    candidates = candidates if candidates is not None else list_candidates(model, granularity)
    hooks_before = count_hooks(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        output = scorer(model, tokenizer, calibration, candidates, **options)
    finally:
        model.train(was_training)
    scores, extra = output if isinstance(output, tuple) else (output, {})
    seconds = time.perf_counter() - start
    if count_hooks(model) != hooks_before:
        raise RuntimeError(f"scorer {name!r} left {count_hooks(model) - hooks_before} hooks on the model")
    if set(scores) != set(candidates) or not all(math.isfinite(v) for v in scores.values()):
        raise RuntimeError(f"scorer {name!r} must return one finite score per candidate")
    meta = {"scorer": name, "samples": len(calibration.items), "dataset": calibration.dataset,
            "seconds": round(seconds, 3), "direction": "higher = more important", **extra}
    return ScoreResult(name, {c: float(scores[c]) for c in candidates}, meta)


__all__ = ["SCORERS", "CalibrationSet", "ScoreResult", "count_hooks", "list_candidates", "run_scorer"]
