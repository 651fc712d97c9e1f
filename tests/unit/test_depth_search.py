"""trimllm compress's search on planted figures: the deepest depth within the tolerance is found, a healed model
that misses its verification backs off to the next shallower one, and the paired interval is the textbook one."""

from __future__ import annotations

import math

import pytest

from trimllm import depth_search as ds

REFERENCE = 0.80


def planted(depth: int) -> float:
    """A healed validation metric losing 0.4 points per block removed (monotone, as the search assumes)."""
    return REFERENCE - 0.004 * depth


def search(tolerance: float, probes: int, verified_at=lambda d: True, estimate=lambda d: REFERENCE - 0.03 * d):
    """The search as compress runs it, on planted figures: the depth chosen and the depths probed."""
    depths = ds.candidate_depths(30, 1, 0.5)
    safe = ds.safe_depth({d: estimate(d) for d in depths}, REFERENCE, tolerance)
    probed = ds.probe_depths(depths, safe, planted, REFERENCE, tolerance, probes)
    order = ds.heal_order(probed, safe, REFERENCE, tolerance, backoffs=2)
    return next((d for d in order if verified_at(d)), 0), probed


def test_candidate_depths():
    assert ds.candidate_depths(30, None, 0.75) == [3, 6, 9, 12, 15, 18, 21]  # an 8th of 30 is 3 blocks
    assert ds.candidate_depths(64, None, 0.5) == [8, 16, 24, 32]
    assert ds.candidate_depths(4, 1, 0.99) == [1, 2, 3]  # a block always stays


@pytest.mark.parametrize("tolerance, deepest", [(1.0, 2), (3.0, 7), (5.0, 12), (0.3, 0)])
def test_the_search_finds_the_deepest_depth_within_the_tolerance(tolerance, deepest):
    # 15 candidates: four bisection steps resolve any of them
    chosen, probed = search(tolerance, probes=4)
    assert chosen == deepest
    assert len(probed) <= 4
    assert all(ds.drop_points(REFERENCE, planted(d)) > tolerance for d in probed if d > deepest)


def test_estimates_within_the_tolerance_need_no_probe():
    estimates = {1: 0.799, 2: 0.795, 3: 0.70, 4: 0.795}  # 4 comes after a miss: not safe
    assert ds.safe_depth(estimates, REFERENCE, 1.0) == 2
    chosen, probed = search(3.0, probes=4, estimate=lambda d: REFERENCE - 0.001 * d)  # all estimates within 3
    assert probed == {} and chosen == 15  # the deepest candidate, without a probe


def test_a_missed_verification_backs_off_to_the_next_shallower_depth():
    chosen, probed = search(3.0, probes=4, verified_at=lambda d: d < 7)
    passing = sorted((d for d, v in probed.items() if ds.drop_points(REFERENCE, v) <= 3.0), reverse=True)
    assert passing[0] == 7 and chosen == passing[1] and chosen < 7
    assert search(3.0, probes=4, verified_at=lambda d: False)[0] == 0  # nothing verifies: the reference itself


def test_heal_order_is_deepest_first_and_bounded():
    probed = {8: 0.79, 12: 0.70, 4: 0.795, 6: 0.792}
    assert ds.heal_order(probed, 2, REFERENCE, 1.0, backoffs=2) == [8, 6, 4]
    assert ds.heal_order(probed, 2, REFERENCE, 1.0, backoffs=5) == [8, 6, 4, 2]
    assert ds.heal_order({}, 0, REFERENCE, 1.0, backoffs=2) == []


def test_paired_drop_and_its_bound():
    reference = [1, 1, 1, 0, 1, 0, 1, 1]
    candidate = [1, 0, 1, 0, 1, 1, 0, 1]
    drop, se = ds.paired_drop(reference, candidate)
    diffs = [0, 100, 0, 0, 0, -100, 100, 0]
    mean = sum(diffs) / 8
    assert drop == pytest.approx(12.5) == pytest.approx(mean)
    assert se == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 7 / 8))
    assert ds.upper_bound(drop, se, 0.95) == pytest.approx(drop + 1.6448536 * se)
    assert ds.verified(0.5, 0.2, 1.0, 0.95) and not ds.verified(0.5, 0.4, 1.0, 0.95)  # 0.83 vs 1.16
    assert ds.verified(-1.0, 0.0, 0.1, 0.95)
    with pytest.raises(ValueError, match="two equal lists"):
        ds.paired_drop([1], [1, 0])


def test_the_report_says_how_many_items_would_decide_an_undecided_verification():
    from trimllm.compress_report import undecided

    heals = {"4": {"drop": 0.5, "se": 0.5, "n": 100},  # half-width 1.645 x 0.5 = 0.82 > the margin 0.5
             "2": {"drop": 0.1, "se": 0.2, "n": 100},  # verified: 0.1 + 0.33 <= 1
             "6": {"drop": 1.5, "se": 0.2, "n": 100}}  # the drop itself is over the tolerance
    lines = undecided({"choice": {"tolerance": 1.0, "confidence": 0.95}, "heals": heals})
    assert len(lines) == 2 and "At 4 blocks removed" in lines[1]
    assert "about 271 items would decide" in lines[1]  # 100 x (1.6449 x 0.5 / 0.5)^2 = 270.6


def test_depths_measured_by_an_earlier_job_narrow_the_search_for_free():
    # SciQ at 3 points: both probes missed (15, 9 blocks) while 6 (within) and 12 (over) were already healed by the
    # job at 1 point; the search must go by them instead of healing the estimates' safe depth, 3.
    depths, calls = [3, 6, 9, 12, 15, 18, 21], []
    figures = {6: 0.925, 9: 0.885, 12: 0.85, 15: 0.83}

    def probe(depth):
        calls.append(depth)
        return figures[depth]

    probed = ds.probe_depths(depths, 3, probe, 0.92, 3.0, probes=2, known={6: 0.925, 12: 0.85, 18: 0.70})
    assert calls == [9] and probed == {6: 0.925, 12: 0.85, 9: 0.885}  # the bracket 6..12 left one depth
    assert ds.heal_order(probed, 3, 0.92, 3.0, backoffs=2) == [6, 3]
    calls.clear()
    assert ds.probe_depths(depths, 3, probe, 0.92, 3.0, probes=2) == {15: 0.83, 9: 0.885}  # nothing known
    assert calls == [15, 9]
    assert ds.probe_depths(depths, 3, probe, 0.92, 3.0, probes=2, known=figures) == {6: 0.925, 9: 0.885}
    assert calls == [15, 9]  # all known: no probe at all


def test_the_depth_table_says_each_probes_length():
    from trimllm.compress_report import depth_rows

    state = {"reference": 0.8, "n_blocks": 30, "estimates": {"3": 0.7}, "heals": {},
             "probes": {"3": {"metric": 0.75, "steps": 12}, "6": {"metric": 0.78, "steps": 150}}}
    rows = depth_rows(state)
    assert [row[3] for row in rows] == ["", "0.7500 (12 steps)", "0.7800 (150 steps)"]
