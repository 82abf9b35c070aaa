"""The one timer for comparing model files: interleaved rounds, one process per model. Torch-free.

Every comparison edgecnn makes (the search's uniform settings, layer probes, candidates and
final choice; the bench scripts) times through :class:`Timer`, so two numbers for one file
come from one protocol:

* one worker process per model file (``python -m edgecnn.measure.interleave``): two ONNX
  Runtime sessions in one process share and fight over thread pools, and a session whose
  threads spin slows its neighbour; only one worker computes at a time;
* rounds interleaved (A, B, C, A, B, C, ...), each with the same warm-up calls and timed calls
  through :func:`edgecnn.measure.latency.time_runs` (the loop ``edgecnn bench`` uses), so a busy
  moment slows every model in that round alike;
* after a model whose runtime spins on when a run returns (ONNX Runtime; an :class:`Engine`,
  whose runtime the timer cannot see), the next model waits ``SETTLE_S`` before its calls:
  otherwise the model that always follows it is timed on cores shared with spinning threads;
* statistics: median over rounds of each round's median (the headline), p90 over all samples,
  and the per-round medians kept, so ratios can be paired per round (:mod:`edgecnn.stats`);
* a timing whose ratios are *claims* (the search's final timing and answer, the bench tables)
  spreads its rounds over ``CLAIM_SPREAD_S`` seconds (:func:`edgecnn.measure.latency.paced_rounds`):
  on a machine shared with other work, back-to-back rounds share one state and their bounds
  do not cover the next timing's (``bench/results/timing_states.md``). Probes that only rank
  layers keep back-to-back rounds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from edgecnn.errors import UserError
from edgecnn.latency_stats import LatencyStats, summarize
from edgecnn.measure import latency as _latency
from edgecnn.measure.latency import interleaved

ROUNDS = 5
ITERATIONS = 20  # timed calls per model per round
WARMUP_RUNS = 3  # untimed calls per model per round, before its timed calls
CLAIM_ROUNDS = 10  # rounds of a timing whose ratios are claims
CLAIM_SPREAD_S = 30.0  # seconds such a timing's rounds are spread over


@dataclass(frozen=True)
class Engine:
    """A runtime other than ONNX Runtime on a file (OpenVINO, PyTorch eager): ``opener``
    ("module:function", importable in the worker after ``sys_path``) called with ``args`` returns
    an object with ``run(x)``; ``input_shape`` is the batch-1 input."""

    opener: str
    args: tuple  # (key, value) pairs, hashable
    input_shape: tuple
    sys_path: tuple = ()

    def command(self) -> dict:
        return {"opener": self.opener, "args": dict(self.args), "input_shape": list(self.input_shape), "sys_path": list(self.sys_path)}


@dataclass
class Timing:
    """One model's times from an interleaved run."""

    median_ms: float  # median over rounds of the round medians
    p90_ms: float  # over all samples
    round_medians_ms: list[float]
    stats: LatencyStats = field(repr=False)
    window_s: Optional[float] = None  # seconds from the first round's start to the last one's end

    def to_dict(self) -> dict:
        out = {"median_ms": round(self.median_ms, 4), "p90_ms": round(self.p90_ms, 4),
               "round_medians_ms": [round(v, 4) for v in self.round_medians_ms], "samples": self.stats.samples}
        if self.window_s is not None:
            out["window_s"] = round(self.window_s, 1)
        return out


class _Worker:
    """A ``python -m edgecnn.measure.interleave`` process holding one session at a time."""

    def __init__(self):
        self.loaded: Optional[tuple] = None
        self.spins = True  # whether its runtime's threads may spin on after a run (see SETTLE_S)
        self.errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty runtime cannot block the worker
        self.process = subprocess.Popen([sys.executable, "-m", "edgecnn.measure.interleave"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.errors, text=True, bufsize=1)

    def call(self, **command):
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.process.wait()
            self.errors.seek(0)
            err = self.errors.read().strip().splitlines() or ["(no output)"]
            raise UserError(f"timing process stopped: {err[-1]}")
        answer = json.loads(line)
        if "error" in answer:
            raise UserError(answer["error"])
        return answer

    def load(self, model: Union[str, Engine], threads: int, batch: int, backend: str = "ort") -> None:
        key = (model, threads, batch, backend)
        if self.loaded != key:
            self.loaded = None
            if isinstance(model, Engine):
                self.call(cmd="load", engine=model.command(), threads=threads, batch=batch)
            else:
                self.call(cmd="load", path=model, threads=threads, batch=batch, backend=backend)
            self.loaded = key
            self.spins = isinstance(model, Engine) or backend in _latency.SPINNING_BACKENDS

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.errors.close()


class Timer:
    """Interleaved timing of model files, one worker process each; workers are reused across
    calls (a new file is loaded into an idle worker), so many small comparisons stay cheap."""

    def __init__(self, threads: int = 0, batch: int = 1, rounds: int = ROUNDS, iterations: int = ITERATIONS,
                 warmup_runs: int = WARMUP_RUNS, backend: str = "ort", settle_s: Optional[float] = None,
                 sleep=time.sleep):
        from edgecnn.targets import CPU_BACKENDS

        if rounds < 1 or iterations < 1 or warmup_runs < 0 or batch < 1:
            raise UserError("rounds, iterations and batch must be >= 1 and warm-up runs >= 0")
        self.settle_s = _latency.SETTLE_S if settle_s is None else settle_s
        self._sleep = sleep
        if backend not in CPU_BACKENDS:
            raise UserError(f"the timer runs CPU runtimes ({', '.join(CPU_BACKENDS)}), not '{backend}'")
        self.threads, self.batch, self.rounds, self.iterations, self.warmup_runs = threads, batch, rounds, iterations, warmup_runs
        self.backend = backend  # the runtime that runs the ONNX files (Engines bring their own)
        self.workers: list[_Worker] = []

    def __enter__(self) -> "Timer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self.workers:
            self.workers.pop().close()

    def time(self, paths: Mapping[str, Union[str, Path, Engine]], rounds: Optional[int] = None,
             spread_s: float = 0.0) -> dict[str, Timing]:
        """Times of every model in ``paths`` (name -> ONNX file or :class:`Engine`), in interleaved
        rounds (``rounds``, default the timer's), spread over ``spread_s`` seconds."""
        rounds = self.rounds if rounds is None else rounds
        if rounds < 1 or spread_s < 0:
            raise UserError("rounds must be >= 1 and the spread >= 0 s")
        names = list(paths)
        for name in names:
            if not isinstance(paths[name], Engine) and not Path(paths[name]).is_file():
                raise UserError(f"model file '{paths[name]}' does not exist; check the path")
        from edgecnn.measure.on_device import interleave_on, measuring_device

        device = measuring_device()  # compress --measure-on: the device's agent runs the same rounds there
        if device is not None and not any(isinstance(p, Engine) for p in paths.values()):
            began = time.perf_counter()
            rounds_there = interleave_on(device, paths, self.threads, self.batch, rounds, self.iterations,
                                         self.warmup_runs, spread_s, self.backend)
            window = time.perf_counter() - began  # from here: the agent's start-up and transfers included
            return {name: summarize_rounds(rounds_there[name], self.batch, window) for name in names}
        while len(self.workers) < len(names):
            self.workers.append(_Worker())
        for name, worker in zip(names, self.workers):
            model = paths[name]
            worker.load(model if isinstance(model, Engine) else str(model), self.threads, self.batch, self.backend)
        times: dict[str, list[list[float]]] = {name: [] for name in names}
        worker_of = dict(zip(names, self.workers))
        began = time.perf_counter()
        for name in interleaved(names, rounds, spread_s, lambda n: worker_of[n].spins, self.settle_s, self._sleep):
            times[name].append(worker_of[name].call(cmd="time", warmup_runs=self.warmup_runs, iterations=self.iterations)["times_s"])
        window = time.perf_counter() - began
        return {name: summarize_rounds(times[name], self.batch, window) for name in names}

    def time_claim(self, paths: Mapping[str, Union[str, Path, Engine]], spread_s: float = CLAIM_SPREAD_S) -> dict[str, Timing]:
        """:meth:`time` under the protocol for ratios that are claims: ``CLAIM_ROUNDS`` rounds
        spread over ``spread_s`` seconds."""
        return self.time(paths, rounds=max(self.rounds, CLAIM_ROUNDS), spread_s=spread_s)


def summarize_rounds(rounds: list[list[float]], batch: int = 1, window_s: Optional[float] = None) -> Timing:
    """The protocol's statistics of per-call seconds grouped by round (every caller uses these)."""
    rounds = [list(r) for r in rounds if len(r)]
    if not rounds:
        raise UserError("no timed rounds")
    medians = [statistics.median(r) * 1e3 for r in rounds]
    samples = [t for r in rounds for t in r]
    return Timing(statistics.median(medians), float(np.percentile(np.asarray(samples) * 1e3, 90)), medians,
                  summarize(samples, batch), window_s)


def time_interleaved(paths: Mapping[str, Union[str, Path]], threads: int = 0, spread_s: float = 0.0,
                     **protocol) -> dict[str, Timing]:
    """One interleaved run of ``paths`` with fresh workers (see :class:`Timer`), rounds spread
    over ``spread_s`` seconds."""
    with Timer(threads, **protocol) as timer:
        return timer.time(paths, spread_s=spread_s)


def _open_engine(spec: dict, threads: int, batch: int):
    import importlib

    for folder in spec["sys_path"]:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    module, _, function = spec["opener"].partition(":")
    try:
        runner = getattr(importlib.import_module(module), function)(**spec["args"], threads=threads)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot open engine {spec['opener']}: {exc}") from None
    shape = (batch, *spec["input_shape"][1:])
    return runner, np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _serve() -> int:
    """Worker loop: JSON commands on stdin (load, time), one JSON answer per line on stdout."""
    from edgecnn.measure.latency import open_runner, time_runs

    runner = run = None
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "load":
                runner = run = None
                if "engine" in command:
                    runner, x = _open_engine(command["engine"], command["threads"], command["batch"])
                    run = (lambda r, x: lambda: r.run(x))(runner, x)
                else:
                    runner = open_runner(command["path"], command.get("backend", "ort"), command["threads"])
                    run = runner.run_callable(runner.input_for(command["batch"]))
                answer: dict = {"ok": True}
            elif command["cmd"] == "time":
                if run is None:
                    raise UserError("no model loaded")
                answer = {"times_s": time_runs(run, 0.0, None, command["iterations"], warmup_runs=command["warmup_runs"])}
            else:
                raise UserError(f"unknown command {command['cmd']!r}")
        except UserError as exc:
            answer = {"error": str(exc)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
