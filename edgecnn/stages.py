"""Thin adapters from pipeline stages onto the modules that do the work.

Each function here calls one public API of another part of edgecnn (passes, export,
measure, pack, train, backends) and nothing else, so the pipeline reads as a list of
stages and a missing part of a partial build is one clear error: "stage X is not
available in this build".
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgecnn.errors import UserError
from edgecnn.targets import get_target


def need(module: str, attr: str, stage: str):
    """``module.attr`` or a UserError saying that ``stage`` is not available in this build."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and not module.startswith(exc.name) and not exc.name.startswith("edgecnn"):
            raise UserError(
                f"stage {stage} needs the Python package '{exc.name}', which is not installed; "
                "install it with: pip install 'edgecnn[compress]'"
            ) from None
        raise UserError(f"stage {stage} is not available in this build ({module} is missing)") from None
    fn = getattr(mod, attr, None)
    if fn is None:
        raise UserError(f"stage {stage} is not available in this build ({module}.{attr} is missing)")
    return fn


# --- machine ------------------------------------------------------------------------------


def busy_machine_threads() -> int:
    """Torch threads for this process: ``EDGECNN_TORCH_THREADS`` if set, else torch's default.

    The count is fixed up front, never derived from the machine's load: float reductions
    (training, calibration) depend on the thread count, and a recipe must reproduce the
    same artifact bit for bit. On an oversubscribed machine, set EDGECNN_TORCH_THREADS=1:
    a 2-thread training step was measured 10x slower than a 1-thread one there.
    """
    import torch

    value = os.environ.get("EDGECNN_TORCH_THREADS", "").strip()
    if not value:
        return torch.get_num_threads()
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"EDGECNN_TORCH_THREADS={value!r} is not a positive integer; unset it or set e.g. 1")
    return int(value)


# --- models -------------------------------------------------------------------------------


def profile(model, input_size: int) -> dict:
    """params, non-zero params and MACs (conv + linear, batch 1) of a PyTorch model."""
    profile_model = need("edgecnn.measure.profile", "profile_model", "profile")
    p = profile_model(model, input_size)
    return {"params": int(p.params), "nonzeros": int(p.nonzero_params), "macs": int(p.macs)}


def is_quantized(model) -> bool:
    """True when a quantize pass has put quantizers into the model (Q/DQ export needed)."""
    return any(hasattr(m, "weight_quantizer") or hasattr(m, "input_quantizer") for m in model.modules())


def fingerprint(model) -> str:
    """A hash of the architecture and every tensor: equal fingerprints mean nothing changed."""
    import hashlib

    h = hashlib.sha256(repr(model).encode())
    for name, tensor in list(model.state_dict().items()):
        h.update(name.encode())
        if hasattr(tensor, "detach"):
            t = tensor.detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


# --- transform passes ---------------------------------------------------------------------


def run_transform(stage: str, model, config, ctx):
    """Run the pass registered under the type of ``config`` (validated) and return the transformed model."""
    from edgecnn.passes.registry import pass_for

    return pass_for(config).fn(model, config, ctx)


def distill(student, teacher, train_set, preprocess, config, flip: bool = True):
    """Knowledge distillation of ``student`` (in place) from ``teacher`` on an image folder."""
    run = need("edgecnn.train.distill", "distill", "distill")
    dataset_cls = need("edgecnn.data.torch_data", "ImageDataset", "distill")
    from edgecnn.passes.hooks import after_step_hooks, regularizers

    result = run(student, teacher, dataset_cls(train_set, preprocess, train=True, flip=flip), config,
                 after_step=after_step_hooks(student), regularizers=regularizers(student, config.shift_l1))
    return student, result


# --- export ---------------------------------------------------------------------------------


def export_fp32(model, path: Path, input_shape, opset: int, batch, metadata: dict, parity_inputs=None, parity: bool = True) -> Path:
    """FP32 ONNX; export_onnx itself checks it against PyTorch on ``parity_inputs``."""
    export_onnx = need("edgecnn.export.onnx_export", "export_onnx", "export")
    return Path(
        export_onnx(
            model, path, input_shape=tuple(input_shape), opset=opset, batch=batch, metadata=metadata,
            parity_inputs=parity_inputs, parity=parity,
        )
    )


def export_quantized(model, path: Path, target: str, input_shape, opset: int, batch, metadata: dict, parity_inputs=None, parity: bool = True) -> dict:
    """Q/DQ ONNX for ``target``; the exporter checks parity on real images and, for trt, TensorRT's placement rules."""
    export_qdq_report = need("edgecnn.export.qdq", "export_qdq_report", "export")
    result = export_qdq_report(
        model, path, target, input_shape=tuple(input_shape), opset=opset, metadata=metadata,
        parity_inputs=parity_inputs, parity=parity, batch=batch,
    )
    lint = None
    if get_target(target).trt_lint:
        lint = "TensorRT Q/DQ placement lint: no violations" if not result.violations else f"{len(result.violations)} violations"
    return {"path": Path(result.path), "parity": result.parity.summary() if result.parity is not None else None, "lint": lint}


def predict_onnx(onnx_path: Path, inputs: np.ndarray, threads: int = 0) -> np.ndarray:
    """Logits of an ONNX file in ONNX Runtime (CPU) on NCHW float32 inputs."""
    run_onnx = need("edgecnn.export.parity", "run_onnx", "measure")
    return run_onnx(onnx_path, inputs, batch_size=32, threads=threads or 0)


# --- compile --------------------------------------------------------------------------------


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def compile_target(onnx_path: Path, target: str, out_dir: Path, fp16: bool) -> dict:
    """Build the runtime engine of ``target`` where one exists and its runtime is installed."""
    if get_target(target).engine is None:
        return {"engine": None, "note": "ONNX Runtime compiles the graph when it loads it; no engine file"}
    if not tensorrt_available():
        return {"engine": None, "note": "TensorRT is not installed here: engine not built (run 'edgecnn compile' on the device)"}
    build = need("edgecnn.backends.tensorrt", "build_engine", "compile")
    engine = Path(out_dir) / (Path(onnx_path).stem + ".engine")
    build(onnx_path, engine, fp16=fp16, int8=True)
    return {"engine": str(engine), "note": None}


# --- measure --------------------------------------------------------------------------------


def onnx_bytes(onnx_path: Path) -> int:
    return Path(onnx_path).stat().st_size


def shipped_bytes(onnx_path: Path) -> Optional[int]:
    """Bytes of the packed .ecnn file (what an app would ship), None when pack is missing."""
    try:
        fn = need("edgecnn.pack", "shipped_size", "measure")
    except UserError:
        return None
    return int(fn(onnx_path))


def latency(onnx_path: Path, runs: int, warmup: int, warmup_seconds: float, threads: Optional[int]) -> dict:
    """Median and p90 latency (ms, batch 1) in ONNX Runtime on this machine, in a fresh process."""
    measure = need("edgecnn.measure.latency", "measure_in_subprocess", "measure")
    result = measure(onnx_path, backend="ort", threads=threads or 0, warmup_s=warmup_seconds, iterations=runs, warmup=warmup)
    return {"median": float(result.median_ms), "p90": float(result.p90_ms), "runtime": result.runtime, "warnings": list(result.warnings)}
