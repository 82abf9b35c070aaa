"""Measurements on a device (edgecnn.devices): latency through the device's agent, the
device's identity for reports, and batches streamed through a model there.

The device runs the same library timer as a local ``edgecnn bench`` (the agent's ``latency``
job), so a row measured there and a row measured here mean the same thing. Several devices
are measured in parallel, one thread each: they are different machines, so they do not
compete for cores (two specs naming the same machine are measured one after the other).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

from edgecnn.devices import Device
from edgecnn.errors import UserError
from edgecnn.measure.latency import LatencyResult, LatencySettings


@dataclass
class DeviceRun:
    """What one device measured, with its probe (identity) and the warnings about it."""

    device: str
    probe: dict
    results: list[LatencyResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"device": self.device, "probe": self.probe, "results": [r.to_dict() for r in self.results],
                "warnings": self.warnings}


def probe_device(device: Device, backend: str = "ort") -> dict:
    """The device's probe (once per device object); a missing runtime there is one line saying what to install."""
    info = getattr(device, "_probe_info", None) or device.probe()
    device._probe_info = info
    require = getattr(device, "require_runtime", None)
    if require is not None:
        require(info, backend)
    return info


def busy_warning(device: Device, info: dict) -> Optional[str]:
    """A device already loaded before the run times slower and noisier: say so, as locally."""
    load, cpus = (info.get("load_average") or [None])[0], info.get("usable_cpus") or 1
    if load is not None and load > 0.5 * cpus:
        return (f"{device.name} was busy before measuring (load {load:g} on {cpus} CPUs): "
                "its timings may be slow and noisy; quote the medians or rerun when it is idle")
    return None


def identity(info: dict) -> str:
    """One line naming the machine a number came from (for consoles and reports)."""
    runtimes = ", ".join(f"{k} {v}" for k, v in sorted(info.get("runtimes", {}).items()))
    flags = "/".join(info.get("cpu_flags") or []) or "no listed flags"
    free = info.get("free_disk_bytes")
    disk = f", {free / 2**30:.1f} GiB free" if free else ""
    return (f"{info.get('device', 'local')}: {info.get('cpu')} ({info.get('machine')}, {flags}, "
            f"{info.get('usable_cpus')} CPUs), {info.get('os')}, Python {info.get('python')}; {runtimes}{disk}")


def measure_on(device: Device, model: Path, batches: Sequence[int], settings: LatencySettings) -> DeviceRun:
    """Stage ``model`` on ``device`` and time it there once per batch size (each in its own agent process)."""
    device.require_latency()
    info = probe_device(device, settings.backend)
    run = DeviceRun(device.name, info, warnings=[w for w in [busy_warning(device, info)] if w])
    remote = device.put(Path(model))
    timeout = 180.0 + settings.warmup_s + (settings.duration_s or 5.0) * 2
    for batch in batches:
        options = LatencySettings(**{**settings.__dict__, "batch": batch})
        data = device.run_agent(["latency", remote, *options.argv()], timeout=timeout)
        result = LatencyResult.from_dict(data)
        result.model = str(model)
        run.results.append(result)
    return run


def measure_on_devices(devices: Sequence[Device], model: Path, batches: Sequence[int],
                       settings: LatencySettings) -> list[DeviceRun]:
    """:func:`measure_on` for each device, in parallel across different machines; order kept."""
    by_machine: dict[str, list[int]] = {}
    for i, device in enumerate(devices):
        by_machine.setdefault(getattr(device, "host", None) or device.kind, []).append(i)
    runs: list[Optional[DeviceRun]] = [None] * len(devices)

    def one_machine(indices: list[int]) -> None:
        for i in indices:
            runs[i] = measure_on(devices[i], model, batches, settings)

    with ThreadPoolExecutor(max_workers=max(1, len(by_machine))) as pool:
        for future in [pool.submit(one_machine, ix) for ix in by_machine.values()]:
            future.result()  # the first failure is raised as its own one line
    return [r for r in runs if r is not None]


def time_on_device(device: Device, model: Path, settings: LatencySettings) -> LatencyResult:
    """One latency measurement on ``device`` (what the search's table and final timing use there)."""
    return measure_on(device, model, [settings.batch], settings).results[0]


def device_predictor(device: Device, model_path: Path, threads: int = 0, opt_level: str = "all", backend: str = "ort"):
    """``(predict, stream)``: ``predict(batch) -> logits`` computed on the device in ``backend``'s
    runtime; close ``stream`` after use."""
    probe_device(device, backend)
    remote = device.put(Path(model_path))
    stream = device.stream(remote, threads=threads, opt_level=opt_level, backend=backend)
    return stream.send, stream


def require_single(devices: Sequence[Device], what: str) -> Device:
    if len(devices) != 1:
        raise UserError(f"{what} runs on one device; give --device once")
    return devices[0]


@dataclass
class DeviceBuild:
    """An engine built and timed where TensorRT is: the files brought back and the timing."""

    device: str
    engine: str
    log: str
    timing_file: str
    timing: dict
    trt_version: str
    command: str
    probe: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_engine_on(device: Device, onnx_path: Path, engine: Path, options: dict, batch: int,
                    trt_version: Optional[str] = None) -> DeviceBuild:
    """Run the pinned trtexec line on ``device`` (build + timing policy), then bring back the engine,
    its build log and the timing; every local file appears whole or not at all."""
    import hashlib
    import json

    from edgecnn.backends import tensorrt as trt_backend
    from edgecnn.backends.trtexec import TrtexecTiming, format_command, parse_trtexec_output, trtexec_command
    from edgecnn.fileio import write_text_atomic

    device.require_latency()
    info = probe_device(device, "trt")
    version = info.get("runtimes", {}).get("tensorrt") or trt_version or "10.3"
    cfg = trt_backend.config_for_onnx(onnx_path, version, batch=(1, batch, batch), **options)
    remote_onnx = device.put(onnx_path)
    remote_engine = f"{remote_onnx}.b{batch}-{hashlib.sha256(repr(sorted(options.items())).encode()).hexdigest()[:12]}.engine"
    args = trtexec_command(remote_onnx, cfg, TrtexecTiming(batch=batch), save_engine=remote_engine,
                           trtexec=info["trtexec"])
    done = device.run(args, "building the TensorRT engine", timeout=3600.0)
    text = done.stdout.decode("utf-8", "replace") + done.stderr.decode("utf-8", "replace")
    log = engine.with_suffix(engine.suffix + ".log")
    write_text_atomic(log, text)  # kept even when the build failed: it says why
    if done.returncode != 0:
        last = next((line for line in reversed(text.splitlines()) if "[E]" in line), None)
        raise UserError(f"{device.name}: trtexec failed (exit {done.returncode}): "
                        f"{(last or device.failure_line(done.returncode, text))[:300]}; build log {log}")
    timing = parse_trtexec_output(text)
    timing_file = engine.with_suffix(engine.suffix + ".timing.json")
    device.fetch(remote_engine, engine)
    build = DeviceBuild(device.name, str(engine), str(log), str(timing_file), timing,
                        timing.get("trt_version") or version, format_command(args), info)
    write_text_atomic(timing_file, json.dumps(build.to_dict(), indent=2) + "\n")
    return build


# -- where the search and the measure stage time (compress --measure-on) ----------------------
_MEASURING_ON: Optional[Device] = None


@contextlib.contextmanager
def measuring_on(device: Optional[Device]) -> Iterator[Optional[Device]]:
    """Within this block the search's latency table and the final timing are measured on ``device``."""
    global _MEASURING_ON
    previous, _MEASURING_ON = _MEASURING_ON, device
    try:
        yield device
    finally:
        _MEASURING_ON = previous


def measuring_device() -> Optional[Device]:
    """The device set by :func:`measuring_on`, or None (time here)."""
    return _MEASURING_ON


def interleave_on(device: Device, paths: dict, threads: int, batch: int, rounds: int, iterations: int,
                  warmup_runs: int, spread_s: float = 0.0, backend: str = "ort") -> dict[str, list[list[float]]]:
    """Per-call seconds by round of every model, timed interleaved by the device's agent (what
    :class:`edgecnn.measure.interleave.Timer` measures here)."""
    staged = [f"{name}={device.put(Path(path))}" for name, path in paths.items()]
    args = ["interleave", *staged, "--threads", str(threads), "--batch", str(batch), "--rounds", str(rounds),
            "--iters", str(iterations), "--warmup", str(warmup_runs)]
    if spread_s:
        args += ["--spread", str(spread_s)]
    if backend != "ort":
        args += ["--backend", backend]
    return device.run_agent(args, timeout=600.0 + spread_s)


def timing_device(spec: Optional[str]) -> Optional[Device]:
    """The device ``compress --measure-on SPEC`` times on (None: here), checked before any work."""
    if spec is None or spec.strip() == "local":
        return None
    from edgecnn.devices import parse_device

    device = parse_device(spec)
    device.require_latency()
    probe_device(device, "ort")
    return device
