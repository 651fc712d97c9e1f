"""Contribution scorers: which blocks (or attention / MLP halves) matter least for a domain.

Every scorer has the same interface and direction: ``(model, tokenizer, calibration set, candidates)`` -> one
finite score per candidate, **higher = more important** (keep), lower = drop first. A scorer is one file in this
folder with one ``@SCORERS.register()`` line (the key is the file name; the folder's other modules are the shared
machinery and register nothing); :func:`run_scorer` times it, checks its options, its output and that it left no
hook behind.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

from torch import nn

from trimllm.registry import Registry
from trimllm.scoring.calibration import CalibrationSet
from trimllm.scoring.candidates import list_candidates
from trimllm.surgery import unwrap

SCORERS: Registry = Registry("scorer", fixed=4)  # (model, tokenizer, calibration, candidates, **options)
SCORERS.discover(__name__)

# Run-wide calibration settings: every scorer that reads calibration batches takes them, the others (depth,
# random) ignore them. Any other option must be one the scorer takes.
SETTINGS = ("batch_size", "max_length", "seed")


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
    progress: bool = False,
    **options,
) -> ScoreResult:
    """Score ``candidates`` (default: every block or half present) with scorer ``name``.

    ``options`` are the scorer's keyword parameters; the calibration settings in :data:`SETTINGS` are passed only
    to the scorers that take them. ``progress`` shows a bar of the model's forward passes while it scores (scorers
    differ in how many they make, so the bar counts and times them rather than guessing a total).

    Raises:
        UnknownNameError: ``name`` is not a registered scorer (the message lists them).
        UnknownOptionError: an option the scorer does not take (the message lists those it takes).
        RuntimeError: the scorer broke its contract (missing / non-finite scores, hooks left behind).
    """
    scorer = SCORERS.get(name)
    takes = SCORERS.options(name)
    options = {k: v for k, v in options.items() if k not in SETTINGS or k in takes}
    SCORERS.check_options(name, options)
    model = unwrap(model)
    candidates = candidates if candidates is not None else list_candidates(model, granularity)
    hooks_before = count_hooks(model)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    with _forward_bar(model, f"scoring {name}", progress):
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


@contextlib.contextmanager
def _forward_bar(model: nn.Module, label: str, enabled: bool):
    """A tqdm bar that ticks on every pass through the last block (whole-model forwards, decoder-only ones and the
    fast scan's partial ones alike); its hook is gone when the block ends."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(desc=label, unit=" forward") as bar:
        from trimllm.architectures import get_layers

        def tick(*_) -> None:  # a forward hook that returns a value replaces the block's output: return None
            bar.update(1)

        handle = get_layers(model)[-1].register_forward_hook(tick)
        try:
            yield
        finally:
            handle.remove()


def scorer_options(name: str, **settings) -> dict:
    """The subset of ``settings`` (e.g. a recipe's ``n``, ``proxy_k``) that scorer ``name`` takes: a recipe or a
    command line sets them once for whichever scorers it runs."""
    takes = SCORERS.options(name)
    return {k: v for k, v in settings.items() if k in takes}


__all__ = ["SCORERS", "SETTINGS", "CalibrationSet", "ScoreResult", "count_hooks", "list_candidates", "run_scorer",
           "scorer_options"]
