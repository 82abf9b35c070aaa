"""``edgecnn compile model.onnx --backend ort|openvino|trt -o OUT``: a runtime artifact from ONNX (no torch).

``--backend ort`` writes ONNX Runtime's optimised graph (what the session would build at
load time, saved so the device skips it). ``--backend openvino`` writes OpenVINO's own model
files (``.xml`` and ``.bin``), which its runtime reads without converting ONNX. ``--backend trt`` builds a TensorRT engine and its
build log; ``--print-trtexec`` prints the equivalent trtexec command with every timing flag
pinned, and works without TensorRT installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecnn.cli_options import device_option
from edgecnn.errors import UserError
from edgecnn.outputs import check_not_an_input, check_output_file, record_output, writing
from edgecnn.targets import BACKENDS


@click.command("compile")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Engine (trt), optimised ONNX (ort) or OpenVINO .xml (openvino, its .bin beside it) to write.")
@click.option("--fp16/--no-fp16", default=None,
              help="TensorRT 8.x/10: allow FP16 kernels (default: on for the float rest of a Q/DQ file); "
                   "TensorRT 11: compile an FP16 ONNX instead.")
@click.option("--int8", is_flag=True, help="TensorRT 8.x/10: allow INT8 kernels (implied by a Q/DQ file).")
@click.option("--strongly-typed/--weakly-typed", "strongly_typed", default=None,
              help="TensorRT 10: precision from the ONNX types (default for files with float16 tensors); "
                   "11 is always strongly typed, 8.x never.")
@click.option("--sparse", is_flag=True, help="Use 2:4 sparse kernels where weights allow (BuilderFlag.SPARSE_WEIGHTS).")
@click.option("--dla", "dla_core", type=int, default=None, help="Run on this DLA core (Jetson), GPU fallback allowed.")
@click.option("--no-gpu-fallback", is_flag=True, help="With --dla: fail instead of running unsupported layers on the GPU.")
@click.option("--workspace", "workspace_mb", type=int, default=None, help="Builder workspace limit in MB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None, help="Timing cache file (read and updated).")
@click.option("--builder-opt-level", type=click.IntRange(0, 5), default=None, help="TensorRT builder optimization level.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size to optimise a dynamic-batch ONNX for.")
@click.option("--threads", type=int, default=0, help="ORT: intra-op threads used while optimising.")
@click.option("--opt-level", type=click.Choice(["basic", "extended", "all"]), default="extended", show_default=True,
              help="ORT: graph optimization level saved ('all' adds hardware-specific layouts, not portable).")
@click.option("--print-trtexec", is_flag=True, help="Print the equivalent trtexec command (no TensorRT needed).")
@click.option("--trt-version", default=None,
              help="TensorRT release for --print-trtexec when TensorRT is not installed: 8.5, 8.6, 10.x or 11.x "
                   "(default 10.3).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def compile_(onnx_file, backend, output, fp16, int8, strongly_typed, sparse, dla_core, no_gpu_fallback, workspace_mb,
             timing_cache, builder_opt_level, batch, threads, opt_level, print_trtexec, trt_version, force, device,
             as_json):
    """Build a runtime artifact from ONNX_FILE."""
    path = Path(onnx_file)
    if not path.is_file():
        raise UserError(f"ONNX file '{path}' does not exist; export one with: edgecnn export MODEL -o {path.name}")
    if batch < 1:
        raise UserError(f"--batch {batch} is not valid; give a positive integer")
    if backend == "openvino":
        if any([fp16, int8, sparse, dla_core is not None, workspace_mb, timing_cache, print_trtexec, threads]):
            raise UserError("--fp16/--int8/--sparse/--dla/--workspace/--timing-cache/--print-trtexec/--threads are "
                            "TensorRT's or ONNX Runtime's options; OpenVINO's model files take none of them")
        if device not in (None, "local"):
            raise UserError("--device builds TensorRT engines (--backend trt); OpenVINO's files are the same on every CPU")
        _compile_openvino(path, output, force, as_json)
        return
    if backend == "ort":
        if any([fp16, int8, sparse, dla_core is not None, workspace_mb, timing_cache, print_trtexec]):
            raise UserError("--fp16/--int8/--sparse/--dla/--workspace/--timing-cache/--print-trtexec are TensorRT "
                            "options; add --backend trt")
        if device not in (None, "local"):
            raise UserError("--device builds TensorRT engines (--backend trt); an ORT graph is optimised when loaded there")
        _compile_ort(path, output, threads, opt_level, force, as_json)
        return
    options = dict(fp16=fp16, int8=int8, strongly_typed=strongly_typed, sparse=sparse, dla_core=dla_core,
                   gpu_fallback=not no_gpu_fallback, workspace_mb=workspace_mb, timing_cache=timing_cache,
                   optimization_level=builder_opt_level)
    if device is not None and device != "local":
        if timing_cache or print_trtexec:
            raise UserError("--timing-cache and --print-trtexec work here only; drop them with --device")
        _compile_trt_on_device(path, output, options, batch, trt_version, force, device, as_json)
        return
    _compile_trt(path, output, options, batch, print_trtexec, trt_version, force, as_json)


def _compile_trt_on_device(path: Path, output, options: dict, batch: int, trt_version, force: bool, spec: str,
                           as_json: bool):
    """Build and time the engine where TensorRT is; bring back the engine, build log and timing."""
    from edgecnn.devices import parse_device
    from edgecnn.measure.on_device import build_engine_on

    engine = Path(output) if output else path.with_suffix(".engine")
    check_output_file(engine, force)
    build = build_engine_on(parse_device(spec), path, engine, options, batch, trt_version)
    if as_json:
        click.echo(json.dumps(build.to_dict()))
        return
    click.echo(f"wrote {build.engine} (built on {build.device}, TensorRT {build.trt_version}); GPU compute time "
               f"median {build.timing['median_ms']} ms, p90 {build.timing['p90_ms']} ms, measured on that device")
    click.echo(f"build log {build.log}; timing {build.timing_file}")


def _compile_ort(path: Path, output, threads: int, opt_level: str, force: bool, as_json: bool):
    from edgecnn.backends.ort import save_optimized

    out = Path(output) if output else path.with_name(f"{path.stem}.ort.onnx")
    check_output_file(out, force, inputs=[path])  # a default output path follows the same rules as -o
    with writing(out):
        save_optimized(path, out, threads=threads, opt_level=opt_level)
        record_output(out, "compile")
    result = {"backend": "ort", "output": str(out), "opt_level": opt_level, "bytes": out.stat().st_size}
    click.echo(json.dumps(result) if as_json else f"wrote {out} (ONNX Runtime graph, optimization level {opt_level})")


def _compile_openvino(path: Path, output, force: bool, as_json: bool):
    from edgecnn.backends.openvino import save_ir

    out = Path(output) if output else path.with_suffix(".xml")
    if out.suffix.lower() != ".xml":
        raise UserError(f"an OpenVINO model is an .xml file with its .bin beside it; give -o {out.with_suffix('.xml').name}")
    for file in (out, out.with_suffix(".bin")):
        check_output_file(file, force, inputs=[path])
    with writing(out):
        files = save_ir(path, out)
        for file in files:
            record_output(file, "compile")
    result = {"backend": "openvino", "output": str(out), "files": [str(f) for f in files],
              "bytes": sum(f.stat().st_size for f in files)}
    click.echo(json.dumps(result) if as_json else f"wrote {out} and {out.with_suffix('.bin').name} (OpenVINO model files)")


def _compile_trt(path: Path, output, options: dict, batch: int, print_trtexec: bool, trt_version, force: bool, as_json: bool):
    from edgecnn.backends import tensorrt as trt_backend
    from edgecnn.backends.trtexec import TrtexecTiming, format_command, trtexec_command

    installed = trt_backend.tensorrt_version()
    version = installed or trt_version or "10.3"
    if installed and trt_version and trt_backend.parse_trt_version(trt_version) != trt_backend.parse_trt_version(installed):
        raise UserError(f"--trt-version {trt_version} differs from the installed TensorRT {installed}; drop it")
    engine = Path(output) if output else path.with_suffix(".engine")
    inputs = [path, options.get("timing_cache")]
    check_not_an_input(engine, inputs)  # also for --print-trtexec: its --saveEngine would replace the input
    _lint_for_tensorrt(path)
    cfg = trt_backend.config_for_onnx(path, version, batch=(1, batch, batch), **options)
    command = format_command(trtexec_command(path, cfg, TrtexecTiming(batch=batch), save_engine=str(engine)))
    if print_trtexec:
        if as_json:
            click.echo(json.dumps({"trtexec": command, "trt_version": cfg.trt_version,
                                   "plan": trt_backend.plan_build(cfg).to_dict()}))
        else:
            click.echo(command)
        if not installed:
            return
        if output is None:
            return
    if not installed:
        raise UserError(trt_backend.INSTALL_HINT + "; or print the trtexec command with --print-trtexec")
    check_output_file(engine, force, inputs=inputs)
    with writing(engine):
        result = trt_backend.build_engine(path, engine, cfg, overwrite=True)
        record_output(engine, "compile")
    from edgecnn.backends.jetson import detect

    jetson = detect()
    payload = {"backend": "trt", "output": result.engine_path, "log": result.log_path, "seconds": result.seconds,
               "bytes": result.engine_bytes, "trt_version": result.trt_version, "plan": result.plan,
               "trtexec": command, "jetson": jetson.to_dict() if jetson.is_jetson else None}
    if as_json:
        click.echo(json.dumps(payload))
        return
    click.echo(f"wrote {result.engine_path} ({result.engine_bytes / 1e6:.2f} MB, TensorRT {result.trt_version}, "
               f"{result.seconds:.1f} s); build log {result.log_path}")
    for note in result.plan.get("notes", []):
        click.echo(f"note: {note}")
    for warning in jetson.warnings:
        click.echo(f"warning: {warning}", err=True)


def _lint_for_tensorrt(path: Path) -> None:
    """edgecnn's TensorRT lint before any build line: refuse what TensorRT's parser rejects, warn on the rest."""
    from edgecnn.export.trt_rules import gate

    for warning in gate(path):
        click.echo(f"warning: {warning}", err=True)
