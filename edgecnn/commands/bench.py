"""``edgecnn bench MODEL.onnx|ENGINE``: latency, throughput and size on this machine (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecnn.cli_options import device_option
from edgecnn.errors import UserError
from edgecnn.targets import BACKENDS, CPU_BACKENDS


def _refuse_foreign_kernels(path: Path) -> None:
    """A latency of kernels that compute the file wrongly is not shown; other CPU classes get a warning."""
    from edgecnn import cpu
    from edgecnn.export.metadata import read_metadata, target_from_metadata

    target = target_from_metadata(read_metadata(path))
    host = cpu.host_class()
    reason = target.unfit_reason(host) if target is not None else None
    if reason and host in target.saturates_on:
        raise UserError(f"{path.name}: {reason}; no latency is shown here: time it on a "
                        f"{' / '.join(target.cpu_classes)} CPU, or bench an export for {host}")
    if reason:
        click.echo(f"warning: {reason}; this latency is this CPU's, not the deployment's", err=True)


@click.command("bench")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Runtime (default: trt for .engine/.plan files; for ONNX, the runtime of the target it was "
                   "exported for: ort or openvino).")
@click.option("--threads", type=int, default=0, show_default=True, help="Runtime threads (0: the runtime's default).")
@click.option("--batch", "batches", type=int, multiple=True, help="Batch size; repeat for several (each in its own process).")
@click.option("--warmup", type=float, default=1.0, show_default=True, help="Warm-up time in seconds.")
@click.option("--duration", type=float, default=None, help="Measure for this many seconds (default 5).")
@click.option("--iterations", type=int, default=None, help="Measure exactly this many runs instead of a duration.")
@click.option("--opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True,
              help="ORT graph optimization level.")
@click.option("--providers", default=None, help="ORT execution providers, e.g. cpu or cuda,cpu.")
@click.option("--profile", "profile_ops", is_flag=True, help="Also print ORT's per-op-type time table.")
@click.option("--size/--no-size", "with_size", default=True, help="Also report file size (ONNX only).")
@click.option("--isolate/--in-process", default=True,
              help="Run each measurement in a fresh process (default; sessions in one process slow each other).")
@click.option("--trtexec", "use_trtexec", is_flag=True,
              help="Engines: also time with trtexec (every timing flag pinned) and report its GPU compute time.")
@device_option(multiple=True)
@click.option("--clean", is_flag=True, help="With --device: afterwards remove edgecnn's cache folder on the device(s).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(model_file, backend, threads, batches, warmup, duration, iterations, opt_level, providers, profile_ops,
          with_size, isolate, use_trtexec, devices, clean, as_json):
    """Measure MODEL_FILE: median/p90/p99 latency, throughput, and size (here, or on --device)."""
    from edgecnn.measure.latency import ENGINE_SUFFIXES, measure_in_subprocess, measure_latency

    path = Path(model_file)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist; check the path")
    if duration is not None and iterations is not None:
        raise UserError("give either --duration or --iterations, not both")
    if backend is None and path.suffix.lower() == ".onnx":  # the runtime of the target it was exported for
        from edgecnn.measure.accuracy import runtime_backend

        backend = runtime_backend(path, "runtime")
    backend = backend or ("trt" if path.suffix.lower() in ENGINE_SUFFIXES else "ort")
    batches = list(batches) or [1]
    if use_trtexec and backend != "trt":
        raise UserError("--trtexec times TensorRT engines; build one with: edgecnn compile MODEL.onnx --backend trt")
    if any(b < 1 for b in batches):
        raise UserError("--batch values must be positive integers")
    if backend in CPU_BACKENDS and path.suffix.lower() == ".onnx":
        _refuse_foreign_kernels(path)
    if backend == "trt" and path.suffix.lower() == ".onnx":  # an engine is built from it: lint first
        from edgecnn.export.trt_rules import gate

        for warning in gate(path):
            click.echo(f"warning: {warning}", err=True)
    if devices:
        if profile_ops or use_trtexec or providers:
            raise UserError("--profile, --trtexec and --providers run here only; drop them with --device")
        from edgecnn.measure.latency import LatencySettings

        settings = LatencySettings(backend=backend, threads=threads, warmup_s=warmup, duration_s=duration,
                                   iterations=iterations, opt_level=opt_level)
        _bench_on_devices(path, devices, batches, settings, with_size, clean, as_json)
        return
    if clean:
        raise UserError("--clean removes the cache folder on a device; give --device")
    results = []
    status = _status(not as_json)
    try:
        for batch in batches:
            status.update(f"measuring {path.name} batch {batch} ({warmup:g} s warm-up + "
                          f"{f'{iterations} runs' if iterations else f'{duration or 5:g} s'})")
            kwargs = dict(backend=backend, batch=batch, threads=threads, warmup_s=warmup, duration_s=duration,
                          iterations=iterations, opt_level=opt_level, providers=providers)
            results.append(measure_in_subprocess(path, **kwargs) if isolate else measure_latency(path, **kwargs))
    finally:
        status.stop()

    size = None
    if with_size and path.suffix.lower() == ".onnx":
        from edgecnn.measure.size import size_report

        size = size_report(path)
    ops = None
    if profile_ops:
        if backend != "ort":
            raise UserError("--profile uses ONNX Runtime's profiler; for engines use trtexec --dumpProfile")
        from edgecnn.backends.ort import profile_ops as run_profile

        ops = run_profile(path, batch=batches[0], threads=threads, opt_level=opt_level, providers=providers)

    trtexec = None
    if use_trtexec:
        trtexec = _trtexec(path, batches[0], warmup, duration, iterations)

    if as_json:
        click.echo(json.dumps({
            "results": [r.to_dict() for r in results],
            "size": size.to_dict() if size else None,
            "ops": [vars(o) for o in ops] if ops else None,
            "trtexec": trtexec,
        }))
        return
    _print_tables(path, results, size, ops)
    if trtexec:
        click.echo(f"trtexec GPU compute time: median {trtexec['median_ms']} ms, p90 {trtexec['p90_ms']} ms, "
                   f"p99 {trtexec['p99_ms']} ms ({trtexec['command']})")


def _bench_on_devices(path: Path, specs, batches, settings, with_size: bool, clean: bool, as_json: bool) -> None:
    """One row per device and batch, measured in parallel across devices, with each device's identity."""
    from edgecnn.devices import parse_device
    from edgecnn.measure.on_device import identity, measure_on_devices

    devices = [parse_device(spec) for spec in specs]
    status = _status(not as_json)
    status.update(f"measuring {path.name} on {', '.join(d.name for d in devices)}")
    try:
        runs = measure_on_devices(devices, path, batches, settings)
    finally:
        status.stop()
    cleaned = [device.clean() for device in devices] if clean else []
    size = None
    if with_size and path.suffix.lower() == ".onnx":
        from edgecnn.measure.size import size_report

        size = size_report(path)
    if as_json:
        click.echo(json.dumps({"devices": [r.to_dict() for r in runs], "size": size.to_dict() if size else None,
                               "cleaned": cleaned}))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    first = runs[0].results[0]
    table = Table(title=f"{path.name}: {first.backend}, threads {first.threads or 'default'}")
    for col in ("device", "batch", "median ms", "p90 ms", "p99 ms", "mean ± std ms", "cv %", "images/s", "runs"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for run in runs:
        for r in run.results:
            s = r.stats
            table.add_row(run.device, str(s.batch), f"{s.median_ms:.3f}", f"{s.p90_ms:.3f}", f"{s.p99_ms:.3f}",
                          f"{s.mean_ms:.3f} ± {s.std_ms:.3f}", f"{s.cv * 100:.1f}", f"{s.throughput_ips:.1f}",
                          str(s.samples))
    console.print(table)
    for run in runs:
        console.print(f"[dim]{identity(run.probe)}[/dim]", soft_wrap=True)
        for warning in sorted({*run.warnings, *(w for r in run.results for w in r.warnings)}):
            console.print(f"[yellow]warning:[/yellow] {run.device}: {warning}", soft_wrap=True)
    if size:
        _print_tables_size(console, size)
    for line in cleaned:
        console.print(line, soft_wrap=True)


def _print_tables_size(console, size) -> None:
    from edgecnn.measure.size import human_bytes

    codecs = ", ".join(f"{k} {human_bytes(v)}" for k, v in size.compressed.items())
    console.print(f"size: {human_bytes(size.onnx_bytes)} ({codecs}); {size.params:,} params, "
                  f"{size.sparsity * 100:.1f}% zeros, {size.stored_bits_per_weight:.1f} stored / "
                  f"{size.distinct_bits_per_weight:.1f} distinct bits per weight")


def _trtexec(path: Path, batch: int, warmup: float, duration, iterations) -> dict:
    """Time the engine with trtexec; its output is kept next to the engine."""
    from edgecnn.backends.tensorrt import TrtBuildConfig, engine_input, tensorrt_version
    from edgecnn.backends.trtexec import TrtexecTiming, find_trtexec, run_trtexec, trtexec_command

    timing = TrtexecTiming(warmup_ms=int(warmup * 1000), duration_s=duration or 5.0, iterations=iterations or 100,
                           batch=batch)
    args = trtexec_command(None, TrtBuildConfig(trt_version=tensorrt_version() or "10.3"), timing,
                           load_engine=str(path), trtexec=find_trtexec(), engine_input=engine_input(path))
    return run_trtexec(args, log_path=path.with_suffix(path.suffix + ".trtexec.log"))


def _print_tables(path, results, size, ops):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    first = results[0]
    table = Table(title=f"{path.name}: {first.backend}, threads {first.threads or 'default'}")
    for col in ("batch", "median ms", "p90 ms", "p99 ms", "mean ± std ms", "cv %", "images/s", "runs"):
        table.add_column(col, justify="right")
    for r in results:
        s = r.stats
        table.add_row(str(s.batch), f"{s.median_ms:.3f}", f"{s.p90_ms:.3f}", f"{s.p99_ms:.3f}",
                      f"{s.mean_ms:.3f} ± {s.std_ms:.3f}", f"{s.cv * 100:.1f}", f"{s.throughput_ips:.1f}", str(s.samples))
    console.print(table)
    system = first.system
    libs = ", ".join(f"{k} {v}" for k, v in system.get("libraries", {}).items())
    console.print(f"[dim]{system.get('cpu')} ({system.get('usable_cpus')} usable CPUs, load "
                  f"{system.get('load_average')}); {libs}[/dim]")
    for warning in sorted({w for r in results for w in r.warnings}):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if size:
        _print_tables_size(console, size)
    if ops:
        op_table = Table(title="time per op type (ORT profiler)")
        for col, justify in (("op", "left"), ("calls", "right"), ("total ms", "right"), ("share %", "right")):
            op_table.add_column(col, justify=justify)
        for row in ops:
            op_table.add_row(row.op_type, str(row.calls), f"{row.total_us / 1000:.2f}", f"{row.share * 100:.1f}")
        console.print(op_table)


class _status:
    """A rich spinner on stderr while measuring (nothing in --json mode)."""

    def __init__(self, enabled: bool):
        self._status = None
        if enabled:
            from rich.console import Console

            self._status = Console(stderr=True).status("measuring")
            self._status.start()

    def update(self, text: str):
        if self._status is not None:
            self._status.update(text)

    def stop(self):
        if self._status is not None:
            self._status.stop()
