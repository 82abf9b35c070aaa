"""Verdicts from one-sided bounds (edgecnn.stats): met, not met, or not resolved."""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn.stats import MET, NOT_MET, NOT_RESOLVED, drop_bound, drop_verdict, ratio_bound, speed_verdict


def paired(n: int, both: int, ref_only: int, cand_only: int):
    """Per-image correctness of a reference and a candidate with the given counts."""
    ref = np.zeros(n, bool)
    cand = np.zeros(n, bool)
    ref[:both] = cand[:both] = True
    ref[both:both + ref_only] = True
    cand[both + ref_only:both + ref_only + cand_only] = True
    return ref, cand


def test_a_drop_inside_the_noise_is_not_resolved():
    # 0.2 points worse on 1000 images, 40 images flipping each way: the bound reaches past 1.0.
    ref, cand = paired(1000, 600, 22, 20)
    result = drop_verdict(ref, cand, budget=1.0)
    assert result["estimate"] == pytest.approx(0.2)
    assert result["upper"] > 1.0 > result["estimate"]
    assert result["verdict"] == NOT_RESOLVED


def test_identical_predictions_meet_any_budget_and_a_large_drop_does_not():
    ref, cand = paired(500, 300, 0, 0)
    assert drop_verdict(ref, cand, budget=0.0)["verdict"] == MET
    ref, cand = paired(500, 300, 60, 0)  # 12 points worse, every flip one way
    assert drop_verdict(ref, cand, budget=1.0)["verdict"] == NOT_MET


def test_paired_bound_is_tighter_than_the_unpaired_spread():
    ref, cand = paired(1000, 700, 10, 0)
    bound = drop_bound(ref, cand)
    unpaired = 1.645 * 100 * np.sqrt(2 * 0.7 * 0.3 / 1000)
    assert bound.upper - bound.estimate < unpaired / 3


def test_speed_ratio_bound_from_per_round_pairs():
    fp32 = [3.0, 3.3, 2.9, 3.6, 3.1]
    fast = [x / 2.0 for x in fp32]  # a busy round slows both alike: the ratio is exact
    result = speed_verdict(fp32, fast, goal=1.8)
    assert result["estimate"] == pytest.approx(2.0) and result["lower"] == pytest.approx(2.0)
    assert result["verdict"] == MET
    noisy = [1.5, 1.9, 1.3, 2.2, 1.4]
    assert speed_verdict(fp32, noisy, goal=1.8)["verdict"] == NOT_RESOLVED
    assert speed_verdict(fp32, fp32, goal=1.8)["verdict"] == NOT_MET
    assert ratio_bound(fp32, noisy).lower < ratio_bound(fp32, noisy).estimate < ratio_bound(fp32, noisy).upper


@pytest.mark.parametrize("call", [lambda: drop_bound([1, 0], [1]), lambda: ratio_bound([1.0], [0.0]),
                                  lambda: drop_bound([1], [1], confidence=1.0)])
def test_bad_input_is_refused(call):
    with pytest.raises(ValueError):
        call()


def test_speed_ratio_is_the_median_round_bounded_by_the_sign_test():
    fp32 = [3.0] * 10
    steady = [1.5, 1.52, 1.49, 1.51, 1.5, 1.48, 1.5, 1.53, 1.5, 1.51]
    burst = steady[:9] + [6.0]  # other work slowed the candidate in one round: the median barely moves
    a, b = ratio_bound(fp32, steady), ratio_bound(fp32, burst)
    assert b.estimate == pytest.approx(a.estimate, rel=0.01) and b.lower == pytest.approx(a.lower, rel=0.01)
    ratios = sorted(3.0 / x for x in burst)  # ten rounds: the second smallest and second largest ratio (98.9 %)
    assert (b.lower, b.upper, b.n) == (pytest.approx(ratios[1]), pytest.approx(ratios[8]), 10)
    few = ratio_bound([3.0] * 4, [1.0] * 4)  # four rounds cannot bound a median at 95 %
    assert few.lower == 0.0 and few.upper == float("inf") and speed_verdict([3.0] * 4, [1.0] * 4, 1.5)["verdict"] == NOT_RESOLVED
