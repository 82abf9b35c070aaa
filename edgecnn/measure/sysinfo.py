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
    for line in cpu.read_cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
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
        "cpu_id": cpu.host_identity(),
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


# ---------------------------------------------------------------------------- environment block

ENVIRONMENT_LIBRARIES = ("onnxruntime", "openvino", "torch", "onnx", "numpy", "nncf")


def edgecnn_commit() -> Optional[str]:
    """The git commit of the edgecnn source tree in use (``+dirty`` with uncommitted changes to
    anything but ``bench/results/``, which benches running side by side write); None for an
    installed wheel."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)bench/results"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def environment(threads: Optional[int] = None) -> dict:
    """The generated block every report and results file carries: CPU model, core design and its
    int8 flags, cores, OS, versions of the runtimes and of edgecnn (commit)."""
    static = _static_info()
    versions = library_versions(("edgecnn",) + ENVIRONMENT_LIBRARIES)
    return {
        "cpu": static["cpu"],
        "cpu_id": static["cpu_id"],  # core design: one marketing name may cover several
        "cpu_flags": static["cpu_flags"],  # edgecnn.cpu: AVX2 / AVX-512 / VNNI / AMX, ARM dot product / i8mm
        "cpu_class": static["cpu_class"],
        "logical_cpus": static["logical_cpus"],
        "usable_cpus": static["usable_cpus"],
        "threads": threads,
        "os": static["os"],
        "machine": static["machine"],
        "python": static["python"],
        "versions": versions,
        "edgecnn_commit": edgecnn_commit(),
    }


def environment_lines(env: dict) -> list[str]:
    """Markdown bullet lines of :func:`environment` (the "Environment" section)."""
    flags = ", ".join(env.get("cpu_flags") or []) or "none recorded"
    flags += f"; class {env['cpu_class']}" if env.get("cpu_class") else ""
    flags = (f"{env['cpu_id']}; " if env.get("cpu_id") else "") + f"flags: {flags}"
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    threads = f", {env['threads']} threads" if env.get("threads") else ""
    return [f"- CPU: {env.get('cpu')} ({flags}); {env.get('usable_cpus')} usable of {env.get('logical_cpus')} "
            f"logical CPUs{threads}",
            f"- OS: {env.get('os')} {env.get('machine')}, Python {env.get('python')}",
            f"- versions: {versions}; edgecnn commit {env.get('edgecnn_commit') or 'n/a'}"]


def environment_markdown(env: Optional[dict] = None, threads: Optional[int] = None) -> str:
    """The "Environment" section of a results file: ``env`` as recorded with its numbers, or this
    machine now (for a file written by the run that measured)."""
    env = env if env is not None else environment(threads)
    return "\n".join(["## Environment (generated)", "", *environment_lines(env), ""])
