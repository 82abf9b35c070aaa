"""Verdicts the data can bear: one-sided confidence bounds on an accuracy drop and a speed ratio.

A goal is "met" only when the bound on the right side of the point estimate says so, "not met"
when the bound on the other side says that, and "not resolved" otherwise: a 0.2-point margin
measured on a thousand images is inside the noise of which images were drawn, and a speed-up
measured in five rounds on a busy machine is inside the noise of the rounds. Torch-free,
numpy only, at the bottom of the package.

* Accuracy drop: paired on per-image correctness (the same images through the reference and
  the candidate), so only the images on which they disagree carry the variance.
* Speed ratio: paired per round (reference and candidate timed in the same round, so a busy
  round slows both): the median of the per-round ratios, bounded by order statistics of those
  ratios (the sign test: no assumption on their spread). Rounds on a shared machine are
  heavy-tailed (a burst of other work slows one file of a round far more than the other), and
  a t bound on the mean log ratio then both moves with one burst and claims too narrow an
  interval (``bench/results/timing_states.md`` compares the two on the same rounds).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

MET, NOT_MET, NOT_RESOLVED = "met", "not met", "not resolved"
CONFIDENCE = 0.95


def _check_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence {confidence} is not valid; give a value in [0.5, 1), e.g. 0.95")


@dataclass(frozen=True)
class Bound:
    """A point estimate with its one-sided lower and upper bounds at ``confidence``."""

    estimate: float
    lower: float
    upper: float
    confidence: float
    n: int

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def normal(cls, estimate: float, standard_error: float, n: int, confidence: float = CONFIDENCE) -> "Bound":
        """Bounds of a normal-approximation estimate (what :func:`drop_bound` computes from the
        per-image differences; also rebuilds them from a stored estimate and standard error)."""
        _check_confidence(confidence)
        half = NormalDist().inv_cdf(confidence) * standard_error
        return cls(estimate, estimate - half, estimate + half, confidence, n)


def drop_bound(reference_correct: Sequence[bool], candidate_correct: Sequence[bool], confidence: float = CONFIDENCE) -> Bound:
    """Top-1 drop in points (reference minus candidate) with one-sided bounds, paired per image."""
    _check_confidence(confidence)
    ref = np.asarray(reference_correct, dtype=np.float64)
    cand = np.asarray(candidate_correct, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"paired correctness needs two equal non-empty 1-D arrays, got {ref.shape} and {cand.shape}")
    diff = (ref - cand) * 100.0
    n = diff.size
    return Bound.normal(float(diff.mean()), float(diff.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf, n, confidence)


def _sign_test_rank(n: int, confidence: float) -> int:
    """The largest j with P(Binomial(n, 1/2) <= j - 1) <= 1 - confidence: the j-th smallest of n
    paired ratios is a one-sided lower bound of their median at ``confidence`` or better (0: n is too
    small for any bound at that confidence)."""
    j, below = 0, 0.0
    while j < n:
        below += math.comb(n, j) / 2 ** n  # P(Binomial <= j)
        if below > 1 - confidence:
            break
        j += 1
    return j


def ratio_bound(reference_rounds_ms: Sequence[float], candidate_rounds_ms: Sequence[float],
                confidence: float = CONFIDENCE) -> Bound:
    """Speed ratio reference/candidate (>1: the candidate is faster) from per-round paired times:
    the median per-round ratio, its one-sided bounds the order statistics the sign test allows
    (five rounds: the smallest and largest ratio, 96.9 %; ten: the second smallest and largest,
    98.9 %; fewer than five: no bound at 95 %, so nothing is resolved)."""
    _check_confidence(confidence)
    ref = np.asarray(reference_rounds_ms, dtype=np.float64)
    cand = np.asarray(candidate_rounds_ms, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 1 or ref.size == 0 or (ref <= 0).any() or (cand <= 0).any():
        raise ValueError("per-round paired times need two equal non-empty lists of positive milliseconds")
    ratios = np.sort(ref / cand)
    n = ratios.size
    j = _sign_test_rank(n, confidence)
    lower, upper = (float(ratios[j - 1]), float(ratios[n - j])) if j else (0.0, math.inf)
    return Bound(float(np.median(ratios)), lower, upper, confidence, n)


def verdict_at_most(bound: Bound, budget: float) -> str:
    """Goal "estimate <= budget" (a drop within its budget)."""
    if bound.upper <= budget:
        return MET
    if bound.lower > budget:
        return NOT_MET
    return NOT_RESOLVED


def verdict_at_least(bound: Bound, goal: float) -> str:
    """Goal "estimate >= goal" (a speed-up reaching its goal)."""
    if bound.lower >= goal:
        return MET
    if bound.upper < goal:
        return NOT_MET
    return NOT_RESOLVED


def drop_verdict(reference_correct, candidate_correct, budget: float, confidence: float = CONFIDENCE) -> dict:
    """JSON-ready drop, its bounds and the verdict against ``budget`` points."""
    bound = drop_bound(reference_correct, candidate_correct, confidence)
    return {**bound.to_dict(), "budget": budget, "verdict": verdict_at_most(bound, budget)}


def speed_verdict(reference_rounds_ms, candidate_rounds_ms, goal: float, confidence: float = CONFIDENCE) -> dict:
    """JSON-ready speed ratio, its bounds and the verdict against ``goal`` (x reference)."""
    bound = ratio_bound(reference_rounds_ms, candidate_rounds_ms, confidence)
    return {**bound.to_dict(), "goal": goal, "verdict": verdict_at_least(bound, goal)}


def describe(result: dict, unit: str = "points", side: Optional[str] = None) -> str:
    """One line: "+0.17 points (95 % upper bound 1.19) against 1.0: not resolved"."""
    side = side or ("upper" if "budget" in result else "lower")
    target = result.get("budget", result.get("goal"))
    return (f"{result['estimate']:+.2f} {unit} ({round(result['confidence'] * 100):d} % {side} bound "
            f"{result[side]:.2f}) against {target:g}: {result['verdict']}")
