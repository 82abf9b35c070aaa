"""Statistics of timed inferences: median, percentiles, spread, throughput. Torch-free.

Below both the backends (trtexec's own timings) and ``edgecnn.measure`` (our timing loop),
so that either can summarise times the same way without importing the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from edgecnn.errors import UserError

CV_LIMIT = 0.025


@dataclass
class LatencyStats:
    samples: int
    batch: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float  # std / mean
    throughput_ips: float  # images per second at the median latency

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(times_s: Sequence[float], batch: int = 1) -> LatencyStats:
    """Statistics of per-inference wall times in seconds."""
    times = np.asarray(times_s, dtype=np.float64) * 1000.0
    if times.size == 0:
        raise UserError("no timed runs: increase --duration or --iterations")
    mean = float(times.mean())
    std = float(times.std(ddof=1)) if times.size > 1 else 0.0
    median = float(np.median(times))
    return LatencyStats(
        samples=int(times.size),
        batch=int(batch),
        median_ms=median,
        p90_ms=float(np.percentile(times, 90)),
        p99_ms=float(np.percentile(times, 99)),
        mean_ms=mean,
        std_ms=std,
        min_ms=float(times.min()),
        max_ms=float(times.max()),
        cv=std / mean if mean > 0 else math.inf,
        throughput_ips=batch * 1000.0 / median if median > 0 else math.inf,
    )


def variation_warning(stats: LatencyStats, limit: float = CV_LIMIT) -> Optional[str]:
    """A warning when run-to-run variation is too high for the mean to be trusted."""
    if stats.cv > limit:
        return (
            f"latency varies {stats.cv * 100:.1f}% (coefficient of variation > {limit * 100:.1f}%): "
            "the machine is busy or clocks are changing; quote the median, close other work, pin clocks"
        )
    return None
