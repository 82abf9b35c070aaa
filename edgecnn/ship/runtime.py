"""The runtime forms of the model: ONNX Runtime's ORT format (made by ONNX Runtime's own
converter) and, for TensorRT, the exact engine build line (never an engine: it is device-specific).

ORT format optimization level: ``extended``, style ``Fixed``. ``basic`` leaves Q/DQ unfused,
and a minimal ORT Mobile build cannot fuse it at load time (it has no optimizers), so int8
models would run as float arithmetic. ``layout``/``all`` add layout transforms (NCHWc on
x86 only; NHWC where the converting build has the kernel), which tie the file to the machine
that converted it. ``extended`` is the highest level that is not hardware-specific: its
fused kernels (QLinearConv, QLinearAdd, QGemm, FusedConv ...) are ONNX or com.microsoft CPU
ops present in every ORT build that includes them, and the reduced-build config lists them.
The converter's ``--target_platform`` is the target's ``ort_format_platform``
(:mod:`edgecnn.targets`): ``ort-arm`` converts with ``arm`` so signed int8 Q/DQ is fused (S8S8
is what ARM64 kernels run); the x86 targets keep the converter's portable default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgecnn.errors import UserError
from edgecnn.lazy import require

ORT_OPTIMIZATION_LEVEL = "extended"
ORT_MODEL = "model.ort"
ORT_CONFIG = "required_operators_and_types.config"
# The TensorRT releases edgecnn.backends.tensorrt plans builds for (its COVERED): JetPack 5.1 /
# 6.0 ship 8.5 / 8.6, JetPack 6.1/6.2 ship 10.3; trtexec's flags differ between them.
TRT_RELEASES = ("8.5", "8.6", "10", "11")
DEFAULT_TRT_RELEASE = "10"


def _platform(target: str):
    from edgecnn.targets import get_target

    return get_target(target).ort_format_platform


def converter_command(onnx_path: Path, out_dir: Path, target: str) -> list[str]:
    args = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", "--optimization_style", "Fixed",
            "--enable_type_reduction", "--output_dir", str(out_dir)]
    platform = _platform(target)
    if platform:
        args += ["--target_platform", platform]
    return args + [str(onnx_path)]


def to_ort_format(onnx_path: Path, out_dir: Path, target: str) -> tuple[Path, Path, str]:
    """Write ``model.ort`` and the reduced-build operator/type config into ``out_dir``.

    Returns (ort file, config file, the converter command as run). The converter runs in its
    own process: its optimization level is an environment variable.
    """
    require("onnxruntime", "ort")
    with tempfile.TemporaryDirectory(prefix=".ort-convert-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        model = tmp / "in" / "model.onnx"
        shutil.copyfile(onnx_path, model)
        args = converter_command(model, tmp / "out", target)
        env = dict(os.environ, ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL=ORT_OPTIMIZATION_LEVEL)
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        ort_files = sorted((tmp / "out").glob("*.ort"))
        configs = sorted((tmp / "out").glob("*.config"))
        if done.returncode != 0 or len(ort_files) != 1 or len(configs) != 1:
            lines = (done.stderr or done.stdout or "").strip().splitlines() or ["no output"]
            raise UserError(f"ONNX Runtime's ORT-format converter failed on '{onnx_path}': {lines[-1][:300]}")
        ort_path, config_path = out_dir / ORT_MODEL, out_dir / ORT_CONFIG
        _move(ort_files[0], ort_path)
        _move(configs[0], config_path)
    command = (f"ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL={ORT_OPTIMIZATION_LEVEL} python -m "
               "onnxruntime.tools.convert_onnx_models_to_ort --optimization_style Fixed --enable_type_reduction"
               + (f" --target_platform {_platform(target)}" if _platform(target) else "") + " model.onnx")
    return ort_path, config_path, command


def _move(src: Path, dst: Path) -> None:
    from edgecnn.fileio import write_bytes_atomic

    write_bytes_atomic(dst, src.read_bytes())


def trt_build_lines(onnx_path: Path, name: str = "model.onnx", engine: str = "model.engine") -> dict:
    """{TensorRT release: the trtexec line, or why there is none} for the ONNX file ``onnx_path``."""
    from edgecnn.backends.tensorrt import config_for_onnx
    from edgecnn.backends.trtexec import format_command, trtexec_command

    lines = {}
    for release in TRT_RELEASES:
        try:
            cfg = config_for_onnx(onnx_path, release)
            lines[release] = format_command(trtexec_command(name, cfg, save_engine=engine))
        except UserError as exc:
            lines[release] = f"# not buildable on TensorRT {release}: {exc}"
    return lines


def edgecnn_compile_line(name: str = "model.onnx", engine: str = "model.engine") -> str:
    return f"edgecnn compile {name} --backend trt -o {engine}"
