"""What a number was measured on: CPU model, flags and class, core/thread counts, library versions, Jetson state.

Recorded with every latency result, because a latency without its machine and thread count
cannot be compared with anything. Torch-free.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from functools import lru_cache
from typing import Optional

from edgecnn import cpu

LIBRARIES = ("edgecnn", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy")


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux, platform elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity/cgroup aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def library_versions(names=LIBRARIES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@lru_cache(maxsize=1)
def _static_info() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu.cpu_flags(),
        "cpu_class": cpu.host_class(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
        "libraries": library_versions(),
    }


def system_info(threads: Optional[int] = None, jetson: bool = False) -> dict:
    """Machine description; ``threads`` is the runtime's thread setting for this measurement,
    ``load_average`` shows whether something else was competing for the CPU."""
    info = dict(_static_info())
    info["threads"] = threads
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        info["load_average"] = None
    if jetson:
        from edgecnn.backends.jetson import detect

        state = detect()
        if state.is_jetson:
            info["jetson"] = state.to_dict()
    return info
