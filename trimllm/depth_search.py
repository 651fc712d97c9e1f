"""The arithmetic of ``trimllm compress``'s search, as pure functions of measured figures: which depths are
candidates, which the cheap estimates already keep within the tolerance, where the short healing runs probe, the
order in which depths are healed, and the paired verification of a healed model.

Depths count removed blocks. Figures are the validation metric (a fraction); drops and tolerances are in points
(1.0 = one point of accuracy), as users state them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist


def candidate_depths(n_blocks: int, step: int | None, max_fraction: float) -> list[int]:
    """Every ``step`` blocks up to ``max_fraction`` of the blocks; at least one block always stays. The default step
    is an 8th of the blocks (at least 1): each estimate is a validation pass, and the search must stay a small share
    of the final healing's compute."""
    step = step or max(1, n_blocks // 8)
    deepest = min(n_blocks - 1, int(max_fraction * n_blocks))
    return list(range(step, deepest + 1, step))


def drop_points(reference: float, value: float) -> float:
    """The drop in points, rounded to 1e-9 so that 0.80 - 0.79 is the 1.0 point a user would call it."""
    return round(100 * (reference - value), 9)


def safe_depth(estimates: dict[int, float], reference: float, tolerance: float) -> int:
    """The deepest depth whose estimate, and every shallower one's, is within the tolerance (0 when none is).
    Training only recovers, so a depth the untrained estimate keeps needs no probe."""
    safe = 0
    for depth in sorted(estimates):
        if drop_points(reference, estimates[depth]) > tolerance:
            break
        safe = depth
    return safe


def probe_depths(depths: list[int], safe: int, probe: Callable[[int], float], reference: float, tolerance: float,
                 probes: int, known: dict[int, float] | None = None) -> dict[int, float]:
    """Bisect the candidates deeper than ``safe`` with at most ``probes`` new healing runs (``probe(depth)`` gives
    the healed validation metric), assuming the drop grows with depth: a depth within the tolerance moves the search
    deeper, one outside it shallower. Depths in ``known`` (measured by an earlier job at another tolerance) narrow
    the bracket first, for free: without that, SciQ at 3 points spent both probes on misses (15, 9 blocks) and
    healed 3 blocks while 6 was already healed and verified. Returns the figures the search went by."""
    deeper = [d for d in depths if d > safe]
    known = {i: known[d] for i, d in enumerate(deeper) if d in (known or {})}
    within = [i for i, v in known.items() if drop_points(reference, v) <= tolerance]
    missed = [i for i, v in known.items() if drop_points(reference, v) > tolerance]
    low, high = max(within, default=-1) + 1, min(missed, default=len(deeper))
    seen = {deeper[i]: known[i] for i in [*within[-1:], *missed[:1]]}  # the bracket's ends
    for _ in range(probes):
        if low >= high:
            break
        middle = (low + high) // 2
        seen[deeper[middle]] = probe(deeper[middle])
        if drop_points(reference, seen[deeper[middle]]) <= tolerance:
            low = middle + 1
        else:
            high = middle
    return seen


def heal_order(probed: dict[int, float], safe: int, reference: float, tolerance: float, backoffs: int) -> list[int]:
    """The depths to heal in full, deepest first: the probed depths within the tolerance, then the estimates' safe
    depth; the first plus at most ``backoffs`` more (a depth of 0 is the reference itself, never healed)."""
    within = sorted((d for d, v in probed.items() if drop_points(reference, v) <= tolerance), reverse=True)
    order = [d for d in [*within, safe] if d > 0]
    return list(dict.fromkeys(order))[: 1 + backoffs]


def paired_drop(reference: list[float], candidate: list[float]) -> tuple[float, float]:
    """The mean drop (points) of ``candidate`` against ``reference`` on the same items, and its standard error
    (the items' paired differences; for right / wrong outcomes this is the normal form of McNemar's comparison)."""
    if len(reference) != len(candidate) or len(reference) < 2:
        raise ValueError(f"paired_drop needs two equal lists of at least 2 items, got {len(reference)} and "
                         f"{len(candidate)}")
    diffs = [100 * (r - c) for r, c in zip(reference, candidate, strict=True)]
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(variance / len(diffs))


def upper_bound(drop: float, se: float, confidence: float) -> float:
    """The one-sided upper confidence bound of a drop: what the verification holds to the tolerance."""
    return drop + NormalDist().inv_cdf(confidence) * se


def verified(drop: float, se: float, tolerance: float, confidence: float) -> bool:
    """Non-inferiority: at ``confidence``, the drop is smaller than the tolerance (not merely its point estimate)."""
    return upper_bound(drop, se, confidence) <= tolerance
