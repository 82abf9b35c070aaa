"""The equivalent ``trtexec`` command line, with every timing flag pinned, and its output parsed.

Why pin everything: trtexec's defaults are not stable across releases (TensorRT 11 removed
the precision flags, made strong typing the only mode and changed timing defaults), so a
number measured with defaults cannot be compared with one from another release. The command
is data (a list of arguments) built from the same :class:`TrtBuildConfig` as the Python
build, so ``edgecnn compile --print-trtexec`` works without TensorRT installed.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from edgecnn.backends.tensorrt import TrtBuildConfig, plan_build
from edgecnn.errors import UserError


@dataclass
class TrtexecTiming:
    """Timing flags of one trtexec run (trtexec units: warm-up in ms, duration in s)."""

    warmup_ms: int = 1000
    duration_s: float = 10.0
    iterations: int = 100  # minimum count; trtexec runs until both duration and iterations are met
    avg_runs: int = 10
    percentiles: Sequence[int] = (90, 95, 99)
    spin_wait: bool = True  # --useSpinWait: spin instead of blocking sync (less jitter)
    data_transfers: bool = False  # False -> --noDataTransfers: time the engine, not PCIe/memcpy
    cuda_graph: bool = False  # True -> --useCudaGraph
    infer_streams: int = 1
    export_times: Optional[str] = None  # --exportTimes=<json> per-iteration timings
    batch: int = 1


def trtexec_command(
    onnx_path: Union[str, Path, None],
    build: TrtBuildConfig,
    timing: Optional[TrtexecTiming] = None,
    save_engine: Optional[str] = None,
    load_engine: Optional[str] = None,
    trtexec: str = "trtexec",
) -> list[str]:
    """Arguments of the trtexec run equivalent to ``edgecnn compile`` + ``edgecnn bench``."""
    timing = timing or TrtexecTiming()
    plan = plan_build(build)  # same validation as the Python build path
    args = [trtexec]
    if load_engine:
        args.append(f"--loadEngine={load_engine}")
    elif onnx_path is not None:
        args.append(f"--onnx={onnx_path}")
    else:
        raise UserError("trtexec needs an ONNX file or an engine to load")
    if not load_engine:
        if "STRONGLY_TYPED" in plan.network_flags and build.trt_major < 11:
            args.append("--stronglyTyped")  # 11.x: always on, flag not needed
        if "FP16" in plan.builder_flags:
            args.append("--fp16")
        if "INT8" in plan.builder_flags:
            args.append("--int8")
        args.append("--sparsity=" + ("enable" if "SPARSE_WEIGHTS" in plan.builder_flags else "disable"))
        if "WORKSPACE" in plan.memory_pool_limits:
            args.append(f"--memPoolSize=workspace:{plan.memory_pool_limits['WORKSPACE'] >> 20}M")
        if plan.optimization_level is not None:
            args.append(f"--builderOptimizationLevel={plan.optimization_level}")
        if plan.timing_cache:
            args.append(f"--timingCacheFile={plan.timing_cache}")
        if plan.profiling_verbosity:
            args.append("--profilingVerbosity=detailed")
        if plan.profile_shapes:
            for name, (low, opt, high) in plan.profile_shapes.items():
                args += [f"--minShapes={name}:{_dims(low)}", f"--optShapes={name}:{_dims(opt)}",
                         f"--maxShapes={name}:{_dims(high)}"]
        if save_engine:
            args.append(f"--saveEngine={save_engine}")
    if plan.default_device_type == "DLA":
        args.append(f"--useDLACore={plan.dla_core}")
        if "GPU_FALLBACK" in plan.builder_flags:
            args.append("--allowGPUFallback")
    if plan.profile_shapes:
        name, (_, opt, _) = next(iter(plan.profile_shapes.items()))
        args.append(f"--shapes={name}:{_dims((timing.batch, *opt[1:]))}")
    args += [
        f"--warmUp={int(timing.warmup_ms)}",
        f"--duration={_number(timing.duration_s)}",
        f"--iterations={int(timing.iterations)}",
        f"--avgRuns={int(timing.avg_runs)}",
        "--percentile=" + ",".join(str(int(p)) for p in timing.percentiles),
        f"--infStreams={int(timing.infer_streams)}",
    ]
    if timing.spin_wait:
        args.append("--useSpinWait")
    if not timing.data_transfers:
        args.append("--noDataTransfers")
    if timing.cuda_graph:
        args.append("--useCudaGraph")
    if timing.export_times:
        args.append(f"--exportTimes={timing.export_times}")
    return args


def format_command(args: Sequence[str]) -> str:
    """A shell-safe one-line rendering of the command."""
    return " ".join(shlex.quote(a) for a in args)


def _dims(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- output parsing -------------------------------------------------------------------------

_STAT_LINE = re.compile(
    r"(?P<label>Latency|Enqueue Time|H2D Latency|GPU Compute Time|D2H Latency):\s*(?P<body>min = .*)$"
)
_STAT_ITEM = re.compile(r"(min|max|mean|median|percentile\((?P<pct>[\d.]+)%\))\s*=\s*(?P<value>[-\d.eE+]+)\s*ms")
_LABELS = {"Latency": "latency", "Enqueue Time": "enqueue", "H2D Latency": "h2d",
           "GPU Compute Time": "gpu_compute", "D2H Latency": "d2h"}


def parse_trtexec_output(text: str) -> dict:
    """Parse trtexec's performance summary (TensorRT 8.x-11.x formats).

    Returns ``{"gpu_compute": {"min","max","mean","median","p90","p95","p99"...}, "latency":
    {...}, ..., "throughput_qps", "host_walltime_s", "trt_version", "passed",
    "median_ms", "p90_ms", "p99_ms"}`` where the last three are GPU compute time (the
    engine's own time; None when not printed, e.g. p90 before TensorRT 8.4).
    """
    result: dict = {}
    for raw in text.splitlines():
        line = raw.strip()
        match = _STAT_LINE.search(line)
        if match:
            stats = {}
            for item in _STAT_ITEM.finditer(match.group("body")):
                key = item.group(1)
                if item.group("pct"):
                    pct = float(item.group("pct"))
                    key = f"p{int(pct) if pct.is_integer() else pct}"
                stats[key] = float(item.group("value"))
            result[_LABELS[match.group("label")]] = stats
            continue
        if (m := re.search(r"Throughput:\s*([\d.eE+]+)\s*qps", line)):
            result["throughput_qps"] = float(m.group(1))
        elif (m := re.search(r"Total Host Walltime:\s*([\d.eE+]+)\s*s", line)):
            result["host_walltime_s"] = float(m.group(1))
        elif (m := re.search(r"Total GPU Compute Time:\s*([\d.eE+]+)\s*s", line)):
            result["total_gpu_compute_s"] = float(m.group(1))
        elif (m := re.search(r"TensorRT version:\s*([\d.]+)", line)):
            result["trt_version"] = m.group(1)
        elif (m := re.search(r"Selected Device:\s*(.+)$", line)):
            result["device"] = m.group(1).strip()
        elif (m := re.search(r"&&&& (PASSED|FAILED) TensorRT\.trtexec.*\[TensorRT v(\d+)\]", line)):
            result["passed"] = m.group(1) == "PASSED"
            result.setdefault("trt_version", _version_from_code(int(m.group(2))))
    if "gpu_compute" not in result:
        raise UserError("no 'GPU Compute Time' line in the trtexec output; did the run fail? check its log")
    gpu = result["gpu_compute"]
    result["median_ms"] = gpu.get("median")
    result["p90_ms"] = gpu.get("p90")
    result["p99_ms"] = gpu.get("p99")
    result["mean_ms"] = gpu.get("mean")
    return result


def _version_from_code(code: int) -> str:
    """trtexec's ``[TensorRT v100300]`` (10.x+: MMmmpp) or ``v8601`` (8.x: Mmpp) -> '10.3.0'."""
    if code >= 100000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def stats_from_export_times(path: Union[str, Path]) -> dict:
    """Median/p90/p99 of the per-iteration GPU compute times trtexec wrote with --exportTimes."""
    from edgecnn.latency_stats import summarize

    records = json.loads(Path(path).read_text())
    compute = [float(r["computeMs"]) / 1000.0 for r in records if "computeMs" in r]
    if not compute:
        raise UserError(f"'{path}' has no computeMs entries; is it a trtexec --exportTimes file?")
    return summarize(compute, batch=1).to_dict()


TRTEXEC_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")


def find_trtexec() -> str:
    """Path of the trtexec binary (PATH, then where JetPack and the tarballs install it)."""
    import shutil

    found = shutil.which("trtexec") or next((p for p in TRTEXEC_LOCATIONS if Path(p).is_file()), None)
    if found is None:
        raise UserError("trtexec not found; it ships with TensorRT (JetPack: /usr/src/tensorrt/bin/trtexec), "
                        "add its folder to PATH")
    return found


def run_trtexec(args: Sequence[str], log_path: Optional[Union[str, Path]] = None, timeout: float = 1800) -> dict:
    """Run a trtexec command, keep its full output in ``log_path``, return the parsed summary."""
    import subprocess

    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"trtexec did not finish in {timeout:.0f} s") from None
    text = (done.stdout or "") + (done.stderr or "")
    if log_path is not None:
        Path(log_path).write_text(text)
    if done.returncode != 0:
        last = next((line for line in reversed(text.splitlines()) if "[E]" in line), text.strip().splitlines()[-1:] or [""])
        raise UserError(f"trtexec failed (exit {done.returncode}): {str(last)[:300]}")
    result = parse_trtexec_output(text)
    result["command"] = format_command(args)
    return result
