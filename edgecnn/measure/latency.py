"""Latency and throughput of an ONNX model (ONNX Runtime) or a TensorRT engine. Torch-free.

Protocol: warm up for a fixed *time* (caches, allocator, thread pool spin-up), then time
single inferences for a fixed duration or iteration count; report median, p90, p99, mean,
std and throughput, and warn when the coefficient of variation exceeds 2.5 % (the machine
was busy, or the clocks moved: the median is then the only number worth quoting).

One engine per process: two ORT sessions in one process share and fight over thread pools
(several-fold slowdowns), so :func:`measure_in_subprocess` runs each measurement in a fresh
``python -m edgecnn.measure.latency`` process and reads its JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from edgecnn.errors import UserError
from edgecnn.latency_stats import CV_LIMIT, LatencyStats, summarize, variation_warning  # noqa: F401  (re-exported)
from edgecnn.targets import BACKENDS, backend_name

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


# Seconds between one model's timed calls and the next model's, when the first ran in a runtime
# whose threads keep spinning after a run returns (ONNX Runtime's intra-op pool does, by default):
# a model started inside that time shares the cores with them (bench/results/timing_order.md).
SETTLE_S = 0.05
SPINNING_BACKENDS = ("ort",)  # runtimes whose threads spin on after a run; OpenVINO's settle at once


def paced_rounds(rounds: int, spread_s: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
    """Round numbers ``0 .. rounds-1``, round ``k`` starting no earlier than ``k * spread_s / (rounds - 1)``
    seconds after round 0 (waiting when ahead; a slow round is not made up for).

    A machine shared with other work changes state for longer than a few back-to-back rounds
    last: their per-round ratios then share one state and their bounds describe that moment
    only. Rounds spread over tens of seconds sample the states a claim should hold across."""
    if rounds < 1 or spread_s < 0:
        raise UserError("rounds must be >= 1 and the spread >= 0 s")
    gap = spread_s / (rounds - 1) if rounds > 1 else 0.0
    start = clock()
    for k in range(rounds):
        wait = start + k * gap - clock()
        if wait > 0:
            sleep(wait)
        yield k


def interleaved(names: list, rounds: int, spread_s: float, spins: Callable[[object], bool], settle_s: float,
                sleep: Optional[Callable[[float], None]] = None):
    """``names`` in interleaved rounds (A, B, C, A, B, C, ...) paced by :func:`paced_rounds`, waiting
    ``settle_s`` before a model whose predecessor ``spins`` (see ``SETTLE_S``): the one order and
    pause of every interleaved timing, in-process or on a device."""
    previous = None
    for _ in paced_rounds(rounds, spread_s):
        for name in names:
            if previous is not None and previous != name and settle_s > 0 and spins(previous):
                (sleep or time.sleep)(settle_s)
            previous = name
            yield name


def time_runs(
    run: Callable[[], object],
    warmup_s: float = 1.0,
    duration_s: Optional[float] = None,
    iterations: Optional[int] = None,
    clock: Callable[[], float] = time.perf_counter,
    on_progress: Optional[Callable[[float], None]] = None,
    warmup_runs: int = 1,
) -> list[float]:
    """Warm up ``run`` for ``warmup_s`` seconds and at least ``warmup_runs`` calls, then time it
    for ``duration_s`` seconds or exactly ``iterations`` calls. Returns per-call seconds."""
    if duration_s is not None and iterations is not None:
        raise UserError("give either --duration or --iterations, not both")
    if duration_s is None and iterations is None:
        duration_s = 5.0
    if warmup_s < 0 or (duration_s is not None and duration_s <= 0) or (iterations is not None and iterations < 1):
        raise UserError("warm-up must be >= 0 s, duration > 0 s and iterations >= 1")
    start = clock()
    done = 0
    while done < max(1, warmup_runs) or clock() - start < warmup_s:
        run()
        done += 1
    times: list[float] = []
    begin = clock()
    while True:
        t0 = clock()
        run()
        t1 = clock()
        times.append(t1 - t0)
        if iterations is not None:
            if len(times) >= iterations:
                break
            if on_progress:
                on_progress(len(times) / iterations)
        else:
            elapsed = t1 - begin
            if elapsed >= duration_s:
                break
            if on_progress:
                on_progress(elapsed / duration_s)
    return times


@dataclass
class LatencyResult:
    model: str
    backend: str
    threads: int
    batch: int
    warmup_s: float
    duration_s: Optional[float]
    iterations: Optional[int]
    stats: LatencyStats
    warnings: list[str] = field(default_factory=list)
    system: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stats"] = self.stats.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyResult":
        data = dict(data)
        data["stats"] = LatencyStats(**data["stats"])
        return cls(**data)

    # Flat views of the headline numbers (what reports and the pipeline read).
    @property
    def median_ms(self) -> float:
        return self.stats.median_ms

    @property
    def p90_ms(self) -> float:
        return self.stats.p90_ms

    @property
    def p99_ms(self) -> float:
        return self.stats.p99_ms

    @property
    def runtime(self) -> str:
        return {"trt": "tensorrt", "openvino": "openvino-cpu"}.get(self.backend, "onnxruntime-cpu")

    def summary(self) -> str:
        s = self.stats
        return (
            f"{Path(self.model).name} [{self.backend}, batch {self.batch}, threads {self.threads or 'default'}]: "
            f"median {s.median_ms:.3f} ms, p90 {s.p90_ms:.3f}, p99 {s.p99_ms:.3f}, mean {s.mean_ms:.3f} "
            f"± {s.std_ms:.3f} ms (cv {s.cv * 100:.1f}%, n={s.samples}), {s.throughput_ips:.1f} images/s"
        )


def open_runner(model_path: Union[str, Path], backend: str = "ort", threads: int = 0, opt_level: str = "all",
                providers=None):
    """The runner for a model file: ORT or OpenVINO for .onnx, TensorRT (Polygraphy) for engines."""
    path = Path(model_path)
    if not path.is_file():
        raise UserError(f"model file '{path}' does not exist; check the path")
    backend = backend_name(backend)
    if backend not in BACKENDS:
        raise UserError(f"backend '{backend}' is not valid; choose {' or '.join(BACKENDS)}")
    if backend == "trt":
        if path.suffix.lower() == ".onnx":
            raise UserError(f"build a TensorRT engine first: edgecnn compile {path} --backend trt -o {path.stem}.engine")
        from edgecnn.backends.tensorrt import TrtRunner

        return TrtRunner(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        raise UserError(f"'{path.name}' looks like a TensorRT engine; bench it with --backend trt")
    if backend == "openvino":
        if providers or opt_level != "all":
            raise UserError("--providers and --opt-level are ONNX Runtime's; OpenVINO's CPU plugin takes neither")
        from edgecnn.backends.openvino import OvRunner

        return OvRunner(path, threads=threads)
    from edgecnn.backends.ort import OrtRunner

    return OrtRunner(path, threads=threads, opt_level=opt_level, providers=providers)


def measure_latency(
    model_path: Union[str, Path],
    backend: str = "ort",
    batch: int = 1,
    threads: int = 0,
    warmup_s: float = 1.0,
    duration_s: Optional[float] = None,
    iterations: Optional[int] = None,
    opt_level: str = "all",
    providers=None,
    on_progress: Optional[Callable[[float], None]] = None,
    runs: Optional[int] = None,
    warmup: Optional[int] = None,
) -> LatencyResult:
    """Measure in this process (see :func:`measure_in_subprocess` to isolate runs).

    ``runs`` is an alias of ``iterations``; ``warmup`` a minimum number of warm-up calls
    (on top of ``warmup_s`` seconds).
    """
    if runs is not None and iterations is None and duration_s is None:
        iterations = int(runs)
    threads = int(threads or 0)
    if batch < 1:
        raise UserError(f"batch {batch} is not valid; give a positive integer")
    runner = open_runner(model_path, backend, threads, opt_level, providers)
    inputs = runner.input_for(batch)
    if duration_s is None and iterations is None:
        duration_s = 5.0
    times = time_runs(runner.run_callable(inputs), warmup_s, duration_s, iterations, on_progress=on_progress,
                      warmup_runs=int(warmup or 1))
    if hasattr(runner, "close"):
        runner.close()
    stats = summarize(times, batch)
    from edgecnn.measure.sysinfo import system_info

    system = system_info(threads=threads, jetson=backend == "trt")
    warnings = [w for w in [variation_warning(stats)] if w]
    warnings += system.get("jetson", {}).get("warnings", [])
    return LatencyResult(str(model_path), backend, threads, batch, warmup_s, duration_s, iterations, stats,
                         warnings, system)


@dataclass(frozen=True)
class LatencySettings:
    """How one measurement runs: :func:`measure_latency`'s options, as the command line of
    ``python -m edgecnn.measure.latency`` (what :func:`measure_in_subprocess` starts)."""

    backend: str = "ort"
    batch: int = 1
    threads: int = 0
    warmup_s: float = 1.0
    duration_s: Optional[float] = None
    iterations: Optional[int] = None
    opt_level: str = "all"
    providers: Optional[str] = None
    warmup: Optional[int] = None  # minimum warm-up calls

    def argv(self) -> list[str]:
        args = ["--backend", self.backend, "--batch", str(self.batch), "--threads", str(self.threads),
                "--warmup", repr(float(self.warmup_s)), "--opt-level", self.opt_level]
        if self.duration_s is not None:
            args += ["--duration", repr(float(self.duration_s))]
        if self.iterations is not None:
            args += ["--iterations", str(int(self.iterations))]
        if self.providers:
            args += ["--providers", self.providers]
        if self.warmup:
            args += ["--warmup-runs", str(int(self.warmup))]
        return args


def measure_in_subprocess(model_path: Union[str, Path], timeout: Optional[float] = None, **settings) -> LatencyResult:
    """Run :func:`measure_latency` in a fresh ``python -m edgecnn.measure.latency`` process;
    ``settings`` are :class:`LatencySettings` fields (the keywords of :func:`measure_latency`)."""
    options = LatencySettings(**settings)
    cmd = [sys.executable, "-m", "edgecnn.measure.latency", str(model_path), *options.argv()]
    if timeout is None:
        timeout = 120.0 + options.warmup_s + (options.duration_s or 0) * 2
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"latency measurement of '{model_path}' did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1].replace("edgecnn: error: ", "")
        raise UserError(f"latency measurement of '{model_path}' failed: {last}")
    return LatencyResult.from_dict(json.loads(done.stdout))


def main(argv=None) -> int:
    """``python -m edgecnn.measure.latency MODEL [...]``: one measurement, JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m edgecnn.measure.latency", description=main.__doc__)
    parser.add_argument("model")
    parser.add_argument("--backend", default="ort", choices=list(BACKENDS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--warmup-runs", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--opt-level", default="all")
    parser.add_argument("--providers", default=None)
    args = parser.parse_args(argv)
    try:
        result = measure_latency(args.model, args.backend, args.batch, args.threads, args.warmup, args.duration,
                                 args.iterations, args.opt_level, args.providers, warmup=args.warmup_runs)
    except UserError as exc:
        print(f"edgecnn: error: {exc}", file=sys.stderr)
        return 2
    json.dump(result.to_dict(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
