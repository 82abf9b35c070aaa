"""The trtexec command equivalent to a build + bench, per TensorRT release, and its output parsed.

Timing policy (one, for every release): **GPU compute time of the engine, without host<->device
transfers, without CUDA graphs, with spin-wait synchronisation, one stream.** Why: a Jetson
latency user wants what the engine costs on the GPU, not PCIe/memcpy (on Jetson's shared memory
the copies are an application choice), and an application that calls ``enqueueV3`` per frame
does not replay a CUDA graph; spin-wait lowers the jitter of the host-side timestamps.

trtexec's defaults changed in 11.0 (``samples/common/sampleOptions.cpp`` at the v11.0 tag): CUDA
graphs on, spin-wait on, data transfers off, and ``--useCudaGraph``, ``--useSpinWait``,
``--noDataTransfers`` became no-ops (``--noCudaGraph``, ``--noSpinWait``,
``--includeDataTransfers`` turn them back). So the same policy needs different flags per
release: :func:`timing_flags`. The command is data (a list of arguments) built from the same
:class:`TrtBuildConfig` as the Python build, so ``edgecnn compile --print-trtexec`` works
without TensorRT installed; the tests check every flag against each release's sources.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from edgecnn.backends.tensorrt import TrtBuildConfig, parse_trt_version, plan_build
from edgecnn.errors import UserError


@dataclass
class TrtexecTiming:
    """One trtexec timing run (trtexec units: warm-up in ms, duration in s). The defaults are the policy."""

    warmup_ms: int = 1000
    duration_s: float = 10.0
    iterations: int = 100  # minimum count; trtexec runs until both duration and iterations are met
    avg_runs: int = 10
    percentiles: Sequence[float] = (90, 95, 99)
    spin_wait: bool = True  # spin instead of blocking sync: less jitter in the host timestamps
    data_transfers: bool = False  # False: time the engine, not the H2D/D2H copies
    cuda_graph: bool = False  # False: one enqueue per inference, as an application does without graphs
    infer_streams: int = 1
    export_times: Optional[str] = None  # --exportTimes=<json> per-iteration timings
    batch: int = 1


def timing_flags(series: tuple[int, int], timing: TrtexecTiming) -> list[str]:
    """The flags that make trtexec of ``series`` time exactly ``timing`` (defaults differ by release)."""
    flags = [
        f"--warmUp={int(timing.warmup_ms)}",
        f"--duration={_number(timing.duration_s)}",
        f"--iterations={int(timing.iterations)}",
        f"--avgRuns={int(timing.avg_runs)}",
        "--percentile=" + ",".join(_number(p) for p in timing.percentiles),
        # 8.5 names it --streams; --infStreams from 8.6 on (--streams is then a deprecated alias)
        (f"--streams={int(timing.infer_streams)}" if series < (8, 6) else f"--infStreams={int(timing.infer_streams)}"),
    ]
    if series[0] >= 11:  # defaults: spin-wait on, CUDA graph on, transfers off
        if not timing.spin_wait:
            flags.append("--noSpinWait")
        if not timing.cuda_graph:
            flags.append("--noCudaGraph")
        if timing.data_transfers:
            flags.append("--includeDataTransfers")
    else:  # 8.x/10.x defaults: blocking sync, no CUDA graph, transfers on
        if timing.spin_wait:
            flags.append("--useSpinWait")
        if timing.cuda_graph:
            flags.append("--useCudaGraph")
        if not timing.data_transfers:
            flags.append("--noDataTransfers")
    if timing.export_times:
        flags.append(f"--exportTimes={timing.export_times}")
    return flags


def trtexec_command(
    onnx_path: Union[str, Path, None],
    build: TrtBuildConfig,
    timing: Optional[TrtexecTiming] = None,
    save_engine: Optional[str] = None,
    load_engine: Optional[str] = None,
    trtexec: str = "trtexec",
    engine_input: Optional[dict] = None,
) -> list[str]:
    """Arguments of the trtexec run equivalent to ``edgecnn compile`` + ``edgecnn bench``.

    With ``load_engine``, ``engine_input`` (:func:`edgecnn.backends.tensorrt.engine_input`) gives
    the input of a dynamic-batch engine, so ``--shapes`` times it at ``timing.batch``.
    """
    timing = timing or TrtexecTiming()
    series = parse_trt_version(build.trt_version)
    plan = plan_build(build)  # same validation as the Python build path
    args = [trtexec]
    if load_engine:
        args.append(f"--loadEngine={load_engine}")
    elif onnx_path is not None:
        args.append(f"--onnx={onnx_path}")  # 8.x: an ONNX model is always parsed with explicit batch
    else:
        raise UserError("trtexec needs an ONNX file or an engine to load")
    if not load_engine:
        if "STRONGLY_TYPED" in plan.network_flags:
            args.append("--stronglyTyped")  # 10.x only: 11.x is always strongly typed, 8.x never
        if "FP16" in plan.builder_flags:
            args.append("--fp16")
        if "INT8" in plan.builder_flags:
            args.append("--int8")
        args.append("--sparsity=" + ("enable" if "SPARSE_WEIGHTS" in plan.builder_flags else "disable"))
        if "WORKSPACE" in plan.memory_pool_limits:
            args.append(f"--memPoolSize=workspace:{plan.memory_pool_limits['WORKSPACE'] >> 20}")  # MiB everywhere
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
    shape = None
    if not load_engine and plan.profile_shapes:
        name, (_, opt, high) = next(iter(plan.profile_shapes.items()))
        shape = (name, opt, high[0])
    elif load_engine and engine_input and engine_input.get("dynamic"):
        shape = (engine_input["name"], engine_input["opt_shape"], engine_input.get("max_batch"))
    if shape is not None:
        name, opt, max_batch = shape
        if max_batch is not None and timing.batch > max_batch:
            raise UserError(f"batch {timing.batch} is above the engine's maximum {max_batch}; rebuild it with "
                            f"edgecnn compile MODEL.onnx --backend trt --batch {timing.batch}")
        args.append(f"--shapes={name}:{_dims((timing.batch, *opt[1:]))}")
    elif timing.batch != 1:
        if load_engine and engine_input is None:
            raise UserError(f"cannot tell the input of '{load_engine}' (no {Path(load_engine).name}.json next to it); "
                            "rebuild it with edgecnn compile, or time batch 1")
        raise UserError(f"this engine has a static batch: --batch {timing.batch} cannot be timed; export with "
                        "--batch dynamic and compile with --batch N")
    args += timing_flags(series, timing)
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
_STAT_ITEM = re.compile(r"(min|max|mean|median|percentile\((?P<pct>[\d.]+)%\))\s*=\s*(?P<value>-?(?:[\d.]+(?:[eE][-+]?\d+)?|inf|nan))\s*ms")
_LABELS = {"Latency": "latency", "Enqueue Time": "enqueue", "H2D Latency": "h2d",
           "GPU Compute Time": "gpu_compute", "D2H Latency": "d2h"}


def parse_trtexec_output(text: str) -> dict:
    """Parse trtexec's performance summary (``printProlog``/``printEpilog`` of
    ``samples/common/sampleReporting.cpp``; one format from 8.5 to 11.x).

    Returns ``{"latency", "enqueue", "h2d", "gpu_compute", "d2h"}`` each
    ``{"min","max","mean","median","p90",...}`` (ms), ``throughput_qps``, ``host_walltime_s``,
    ``total_gpu_compute_s``, ``warmup_queries``, ``warmup_ms``, ``timed_queries``,
    ``timed_s``, ``trace_averages`` (the ``--avgRuns`` windows), ``trt_version``, ``device``, ``passed``, and ``median_ms``/``p90_ms``/``p99_ms``/
    ``mean_ms`` of the GPU compute time (the timing policy's number; None when not printed).
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
                    key = f"p{float(item.group('pct')):g}"
                stats[key] = float(item.group("value"))
            result[_LABELS[match.group("label")]] = stats
            continue
        if (m := re.search(r"Throughput:\s*([\d.eE+-]+)\s*qps", line)):
            result["throughput_qps"] = float(m.group(1))
        elif (m := re.search(r"Total Host Walltime:\s*([\d.eE+-]+)\s*s", line)):
            result["host_walltime_s"] = float(m.group(1))
        elif (m := re.search(r"Total GPU Compute Time:\s*([\d.eE+-]+)\s*s", line)):
            result["total_gpu_compute_s"] = float(m.group(1))
        elif (m := re.search(r"Warmup completed (\d+) queries over ([\d.eE+-]+) ms", line)):
            result["warmup_queries"], result["warmup_ms"] = int(m.group(1)), float(m.group(2))
        elif (m := re.search(r"Timing trace has (\d+) queries over ([\d.eE+-]+) s", line)):
            result["timed_queries"], result["timed_s"] = int(m.group(1)), float(m.group(2))
        elif (m := re.search(r"Average on (\d+) runs - GPU latency: ([\d.eE+-]+) ms - Host latency: ([\d.eE+-]+) ms "
                               r"\(enqueue ([\d.eE+-]+) ms\)", line)):
            result.setdefault("trace_averages", []).append(
                {"runs": int(m.group(1)), "gpu_ms": float(m.group(2)), "host_ms": float(m.group(3)),
                 "enqueue_ms": float(m.group(4))})
        elif (m := re.search(r"TensorRT version:\s*([\d.]+)", line)):
            result["trt_version"] = m.group(1)
        elif (m := re.search(r"Selected Device:\s*(.+)$", line)):
            result["device"] = m.group(1).strip()
        elif (m := re.search(r"&&&& (PASSED|FAILED) TensorRT\.trtexec.*?\[TensorRT v(\d+)\]", line)):
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
        from edgecnn.fileio import write_text_atomic

        write_text_atomic(log_path, text)
    if done.returncode != 0:
        last = next((line for line in reversed(text.splitlines()) if "[E]" in line), text.strip().splitlines()[-1:] or [""])
        raise UserError(f"trtexec failed (exit {done.returncode}): {str(last)[:300]}")
    result = parse_trtexec_output(text)
    result["command"] = format_command(args)
    return result
