"""The method: a multiple-choice knapsack on measured costs, its budget bisected on measured accuracy.

Each unit contributes a latency change (from the measured table, around a reference
configuration) and an accuracy cost (its measured sensitivity). For a proxy budget ``b``,
:func:`knapsack` returns the configuration of least predicted latency whose summed cost is
at most ``b`` (dynamic programming over the budget cut into ``bins`` steps, costs rounded up:
never over budget). The budget that just keeps the *measured* top-1 drop within the
limit is then found by bisection, each probe a real artifact evaluated on the search images
(:func:`solve`); configurations whose measured drop exceeds the limit are rejected however
fast. docs/search.md says why this method (and not RL or evolution) and what it assumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class Candidate:
    config: dict
    predicted_ms: float
    proxy: float
    budget: Optional[float] = None
    drop: Optional[float] = None  # measured top-1 drop in points (search part)
    measured_ms: Optional[float] = None
    feasible: Optional[bool] = None
    info: dict = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return self.measured_ms if self.measured_ms is not None else self.predicted_ms

    def to_dict(self) -> dict:
        return {"predicted_ms": round(self.predicted_ms, 3), "measured_ms": self.measured_ms, "proxy": round(self.proxy, 5) if math.isfinite(self.proxy) else None,
                "budget": self.budget, "drop": self.drop, "feasible": self.feasible, **self.info}


@dataclass
class SearchResult:
    chosen: Optional[Candidate]
    verified: list[Candidate]
    max_drop: float
    final_timing: Optional[dict] = None  # the final timing's protocol: rounds, spread_s, window_s

    @property
    def rejected(self) -> list[Candidate]:
        return [c for c in self.verified if c.feasible is False]


def knapsack(choices: list[list[tuple[Any, float, float]]], budget: float, bins: int = 2000) -> list[int]:
    """Index of the chosen option per unit: least summed latency with summed cost <= budget.

    ``choices[u] = [(option, latency, cost), ...]``; costs >= 0. Ties go to the earlier option.
    """
    inf = math.inf
    best = np.full(bins + 1, inf)
    best[0] = 0.0
    picks, steps = [], []
    for options in choices:
        new = np.full(bins + 1, inf)
        pick = np.full(bins + 1, -1)
        step = []
        for k, (_, latency, cost) in enumerate(options):
            if cost <= 0:
                c = 0
            elif budget <= 0:
                c = bins + 1
            else:
                c = int(math.ceil(cost * bins / budget - 1e-9))
            step.append(c)
            if c > bins:
                continue
            shifted = np.full(bins + 1, inf)
            shifted[c:] = best[: bins + 1 - c] + latency
            better = shifted < new
            new[better] = shifted[better]
            pick[better] = k
        best, _ = new, picks.append(pick)
        steps.append(step)
    if not np.isfinite(best).any():
        raise ValueError("no configuration fits the budget (every unit's first option must cost 0)")
    level = int(np.argmin(best))
    chosen = []
    for pick, step in zip(reversed(picks), reversed(steps)):
        k = int(pick[level])
        chosen.append(k)
        level -= step[k]
    return chosen[::-1]


def config_key(config: dict) -> tuple:
    """A hashable identity of a configuration."""
    return tuple(sorted((k, str(v)) for k, v in config.items()))


def _choices(space, latency_fn: Callable[[dict], float], cost_fn: Callable[[str, Any], float], reference: dict):
    """Per unit: (option, latency change around ``reference``, cost)."""
    base = latency_fn(reference)
    choices = []
    for unit in space.units:
        row = []
        for option in unit.options:
            trial = dict(reference)
            trial[unit.name] = option
            cost = cost_fn(unit.name, option)
            if not math.isfinite(cost) and option != reference[unit.name]:
                continue  # not scored (time budget): never chosen
            row.append((option, latency_fn(trial) - base, cost))
        choices.append(row)
    return choices


def config_for_budget(space, choices, budget: float, bins: int = 2000) -> dict:
    picks = knapsack(choices, budget, bins)
    return {unit.name: choices[i][k][0] for i, (unit, k) in enumerate(zip(space.units, picks))}


def solve(space, latency_fn: Callable[[dict], float], cost_fn: Callable[[str, Any], float],
          verify: Callable[[dict], tuple[float, Optional[float]]], max_drop: float, reference: Optional[dict] = None,
          max_verify: int = 8, bins: int = 2000, log: Callable[[str], None] = lambda s: None,
          out_of_time: Callable[[], bool] = lambda: False) -> SearchResult:
    """Fastest configuration whose measured drop (``verify(config) -> (drop points, measured ms)``,
    or ``(drop, ms, info)`` where ``info["gate"]`` replaces the drop in the test) is at most
    ``max_drop``: budget bisection, at most ``max_verify`` measurements.

    Once ``out_of_time()`` says so, the next candidate is not verified: it is kept with
    ``feasible`` None and ``info["not_verified"]`` = "time budget", and the bisection ends."""
    reference = reference or space.base()
    choices = _choices(space, latency_fn, cost_fn, reference)
    total = sum(max(c for _, _, c in row) for row in choices)
    verified: dict[tuple, Candidate] = {}

    def candidate(budget: float) -> Candidate:
        config = config_for_budget(space, choices, budget, bins)
        proxy = sum(cost_fn(u.name, config[u.name]) for u in space.units)
        best = Candidate(config, latency_fn(config), proxy, budget)
        # The deltas are additive only around the reference: where they mislead (neighbouring
        # layers interact), the reference itself may be the faster answer within the budget.
        ref_proxy = sum(cost_fn(u.name, reference[u.name]) for u in space.units)
        ref_ms = latency_fn(reference)
        if ref_proxy <= budget and ref_ms < best.predicted_ms:
            best = Candidate(dict(reference), ref_ms, ref_proxy, budget)
        return best

    stopped: list[Candidate] = []

    def check(cand: Candidate) -> bool:
        key = config_key(cand.config)
        if key not in verified and out_of_time():
            cand.info["not_verified"] = "time budget"
            stopped.append(cand)
            log(f"budget {cand.budget:.4g}: predicted {cand.predicted_ms:.2f} ms, proxy {cand.proxy:.4g}, "
                "not verified (time budget)")
            return False
        if key not in verified:
            cand.drop, cand.measured_ms, *extra = verify(cand.config)
            info = dict(extra[0]) if extra else {}
            cand.feasible = info.pop("gate", cand.drop) <= max_drop
            cand.info.update(info)
            verified[key] = cand
            log(f"budget {cand.budget:.4g}: predicted {cand.predicted_ms:.2f} ms, proxy {cand.proxy:.4g}, "
                f"drop {cand.drop:.2f} -> {'ok' if cand.feasible else 'rejected'}")
        return bool(verified[key].feasible)

    low, high = 0.0, total
    fastest = candidate(high)
    if total <= 0 or check(fastest) or stopped:
        return _result(verified, max_drop, stopped)
    budget = total / 16
    while len(verified) < max_verify and high - low > 1e-6 * max(total, 1e-12):
        budget = math.sqrt(low * high) if low > 0 else min(budget, high / 4)
        probe = candidate(budget)
        if check(probe):
            low = budget
        elif stopped:
            break
        else:
            high = budget
            if low == 0:
                budget = budget / 4
    return _result(verified, max_drop, stopped)


def _result(verified: dict, max_drop: float, not_verified: Optional[list] = None) -> SearchResult:
    """Verified candidates by measured time, then those left unverified (no drop, never chosen)."""
    found = list(verified.values())
    feasible = [c for c in found if c.feasible]
    chosen = min(feasible, key=lambda c: c.ms) if feasible else None
    return SearchResult(chosen, sorted(found, key=lambda c: c.ms) + list(not_verified or []), max_drop)
