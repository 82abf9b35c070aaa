"""The engines compared by bench/run.py, as data: what each needs, how it is built and opened.

``build`` (optional) runs once in a fresh process (calibration time and peak memory are
measured there) and returns the artifact; ``open`` runs in the engine's own long-lived
worker process and returns a runner with ``run(x) -> logits``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Engine:
    name: str
    label: str
    precision: str  # 'fp32' | 'int8': which measured peak MAC rate it is compared with
    open: str  # "module:function" -> runner
    build: Optional[str] = None  # "module:function" -> artifact dict; None: runs the FP32 ONNX / module
    requires: tuple[str, ...] = ()  # importable modules it needs
    artifact_kind: str = "onnx"  # onnx | ir | module
    notes: str = ""
    extra: dict = field(default_factory=dict)
    # edgecnn's target for this engine's artifact, when fixed; None: the run's --target
    target: Optional[str] = None


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in [
        Engine("torch", "PyTorch eager FP32", "fp32", "engines.torch_eager:open_eager",
               requires=("torch",), artifact_kind="module"),
        Engine("ort_fp32", "ORT FP32", "fp32", "engines.ort:open_onnx", requires=("onnxruntime",)),
        Engine("edgecnn_int8", "edgecnn INT8 (ORT)", "int8", "engines.ort:open_onnx",
               build="engines.edgecnn_quant:build_int8",
               requires=("onnxruntime", "torch", "edgecnn.export.qdq", "edgecnn.passes.quant")),
        Engine("edgecnn_w6a8", "edgecnn W6A8 (ORT)", "int8", "engines.ort:open_onnx",
               build="engines.edgecnn_quant:build_w6a8",
               requires=("onnxruntime", "torch", "edgecnn.export.qdq", "edgecnn.passes.quant")),
        Engine("edgecnn_w7a8", "edgecnn W7A8 (ORT, reduce-range)", "int8", "engines.ort:open_onnx",
               build="engines.edgecnn_quant:build_w7a8",
               requires=("onnxruntime", "torch", "edgecnn.export.qdq", "edgecnn.passes.quant")),
        Engine("edgecnn_int8_u8u8", "edgecnn INT8 (ORT, ort-x86 form: U8U8)", "int8", "engines.ort:open_onnx",
               build="engines.edgecnn_quant:build_int8",
               requires=("onnxruntime", "torch", "edgecnn.export.qdq", "edgecnn.passes.quant"), target="ort-x86"),
        Engine("edgecnn_int8_ov", "edgecnn INT8 file in OpenVINO", "int8", "engines.openvino_engines:open_ir",
               build="engines.edgecnn_quant:build_int8",
               requires=("openvino", "torch", "edgecnn.export.qdq", "edgecnn.passes.quant"),
               notes="edgecnn's Q/DQ ONNX (the run's --target) read by OpenVINO's CPU plugin as it is: no NNCF"),
        Engine("ort_qstatic", "ORT quantize_static INT8", "int8", "engines.ort:open_onnx",
               build="engines.ort:build_quantize_static", requires=("onnxruntime",)),
        Engine("ov_fp32", "OpenVINO FP32", "fp32", "engines.openvino_engines:open_fp32",
               requires=("openvino",)),
        Engine("ov_int8", "OpenVINO INT8 (NNCF PTQ)", "int8", "engines.openvino_engines:open_ir",
               build="engines.openvino_engines:build_nncf_int8", requires=("openvino", "nncf"),
               artifact_kind="ir"),
    ]
}


def missing_requirement(engine: Engine) -> Optional[str]:
    """The first module the engine needs that cannot be imported here, else None."""
    for module in engine.requires:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def resolve(target: str):
    """'module:function' -> the function (imports the module)."""
    import importlib

    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def timed_runner(open_target: str, job: dict, artifact: dict, threads: int):
    """The engine's runner opened inside edgecnn's timing worker (edgecnn.measure.interleave.Engine)."""
    return resolve(open_target)({**job, "threads": threads}, artifact)


def host_ort_target(name: str, runtimes: tuple[str, ...] = ("ort",)) -> tuple[str, Optional[str]]:
    """(the target ``name`` means on this CPU, a family such as "x86" resolved; a one-line reason it
    cannot be timed here, or None): a target for a runtime not in ``runtimes`` (default: ONNX
    Runtime only), or one whose int8 kernels on this CPU compute it wrongly, gives timings and
    accuracy that are not the deployment's."""
    from edgecnn import cpu
    from edgecnn.targets import TARGETS, resolve_target_name

    resolved = resolve_target_name(name)
    target = TARGETS.get(resolved)
    if target is None or target.backend not in runtimes:
        valid = ", ".join(n for n, t in TARGETS.items() if t.backend in runtimes)
        what = "an ONNX Runtime" if runtimes == ("ort",) else f"a {' or '.join(runtimes)}"
        return resolved, f"'{name}' is not {what} target; valid: x86, {valid}"
    if cpu.host_class() in target.saturates_on:
        return resolved, target.unfit_reason(cpu.host_class())
    return resolved, None
