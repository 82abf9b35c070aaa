"""Helpers shared by the engines: calibration images, thread settings, process memory."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np


def images(job: dict) -> np.ndarray:
    """The preprocessed image cache of this model's preset, memory-mapped (N, 3, H, W) float32."""
    return np.load(job["cache"], mmap_mode="r")


def calibration_arrays(job: dict) -> list[np.ndarray]:
    """The calibration images, one (1, 3, H, W) float32 array each (the same for every engine)."""
    cache = images(job)
    return [np.ascontiguousarray(cache[i:i + 1]) for i in job["calib_indices"]]


def _proc_status_mb(field: str):
    """``field`` of /proc/self/status (kB there) in MB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux /proc)."""
    value = _proc_status_mb("VmRSS")
    return float("nan") if value is None else value


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far in MB.

    VmHWM, not ru_maxrss: a spawned process is fork+exec of the parent and ru_maxrss keeps
    the parent's peak across exec, VmHWM belongs to the new address space only.
    """
    value = _proc_status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if value is None else value


def artifact_bytes(*paths) -> int:
    return sum(Path(p).stat().st_size for p in paths if p and Path(p).exists())
