"""ONNX Runtime backend: a session with explicit threads, optimisation level and provider,
``run`` for inference and ``profile`` for a per-op-type time table (ORT's own profiler).

No torch here: this runs on the device.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgecnn.backends.shapes import InputShape
from edgecnn.errors import UserError
from edgecnn.fileio import atomic_path
from edgecnn.lazy import lazy_import

OPT_LEVELS = ("disable", "basic", "extended", "all")
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dml": "DmlExecutionProvider",
}


_onnxruntime = lazy_import("onnxruntime", extra="ort")


def _ort():
    return _onnxruntime.load()


def resolve_providers(providers: Union[None, str, Sequence[str]]) -> list[str]:
    """Provider names (aliases like 'cpu', 'cuda' accepted) checked against the installed ORT."""
    ort = _ort()
    available = ort.get_available_providers()
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [p for p in providers.split(",") if p.strip()]
    resolved = []
    for name in providers:
        full = PROVIDER_ALIASES.get(name.strip().lower(), name.strip())
        if full not in available:
            raise UserError(
                f"ONNX Runtime provider '{name}' is not available in this install; available: {', '.join(available)}"
            )
        resolved.append(full)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")  # fallback for ops the accelerator lacks
    return resolved


def session_options(threads: int = 0, opt_level: str = "all", profile_prefix: Optional[str] = None,
                    inter_threads: int = 1, spin: Optional[bool] = None):
    """``onnxruntime.SessionOptions`` from plain values; threads 0 = ORT's default (all cores)."""
    ort = _ort()
    if opt_level not in OPT_LEVELS:
        raise UserError(f"graph optimization level '{opt_level}' is not valid; choose one of {', '.join(OPT_LEVELS)}")
    if threads < 0:
        raise UserError(f"thread count {threads} is not valid; give 0 (ORT default) or a positive number")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = int(inter_threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    options.log_severity_level = 3
    if spin is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


@dataclass
class OrtRunner(InputShape):
    """One ONNX Runtime session. ``OrtRunner(path, threads=2).run(batch) -> first output``."""

    path: Union[str, Path]
    threads: int = 0
    opt_level: str = "all"
    providers: Union[None, str, Sequence[str]] = None
    profile_prefix: Optional[str] = None
    optimized_model_path: Optional[str] = None
    session: object = field(init=False, repr=False)

    def __post_init__(self):
        ort = _ort()
        path = Path(self.path)
        if not path.is_file():
            raise UserError(f"ONNX file '{path}' does not exist; check the path")
        self.providers = resolve_providers(self.providers)
        options = session_options(self.threads, self.opt_level, self.profile_prefix)
        if self.optimized_model_path:
            options.optimized_model_filepath = str(self.optimized_model_path)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise UserError(f"ONNX Runtime cannot load '{path}': {str(exc).splitlines()[0][:300]}") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = list(first.shape)
        self.input_dtype = np.float16 if first.type == "tensor(float16)" else np.float32

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)})[0]

    def run_callable(self, batch: np.ndarray):
        """A zero-argument function running one inference (what the latency loop times)."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}
        run = self.session.run
        return lambda: run(None, feed)

    def end_profiling(self) -> Optional[str]:
        return self.session.end_profiling() if self.profile_prefix else None


@dataclass
class OpTime:
    op_type: str
    calls: int
    total_us: float
    share: float  # of all node time


def profile_ops(
    path: Union[str, Path], batch: int = 1, runs: int = 20, threads: int = 0, opt_level: str = "all",
    providers=None, by_input_type: bool = False,
) -> list[OpTime]:
    """Per-op-type time table from ORT's built-in profiler, largest first (``by_input_type``:
    one row per op type and type of its first input, e.g. ``MaxPool(uint8)``)."""
    with tempfile.TemporaryDirectory(prefix="edgecnn-ort-profile-") as tmp:
        runner = OrtRunner(path, threads=threads, opt_level=opt_level, providers=providers,
                           profile_prefix=os.path.join(tmp, "ort"))
        x = runner.input_for(batch)
        for _ in range(max(1, runs)):
            runner.run(x)
        trace_file = runner.end_profiling()
        with open(trace_file) as fh:
            events = json.load(fh)
    return summarize_profile(events, skip_first=1, by_input_type=by_input_type)


def summarize_profile(events: list[dict], skip_first: int = 0, by_input_type: bool = False) -> list[OpTime]:
    """Aggregate ORT trace events (``cat == 'Node'``, ``name`` ending in ``_kernel_time``)
    by ``args.op_name`` (and, ``by_input_type``, the type of the node's first input: ORT runs
    one op type through different kernels per type). ``skip_first`` drops the first runs
    (allocation, warm-up)."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start_after = None
    if skip_first and len(runs) > skip_first:
        start_after = sorted(r["ts"] + r.get("dur", 0) for r in runs)[skip_first - 1]
    totals: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if start_after is not None and event.get("ts", 0) < start_after:
            continue
        op = event.get("args", {}).get("op_name", "?")
        if by_input_type:
            inputs = event.get("args", {}).get("input_type_shape") or [{}]
            op = f"{op}({next(iter(inputs[0]), '?')})"
        entry = totals.setdefault(op, [0, 0.0])
        entry[0] += 1
        entry[1] += float(event.get("dur", 0))
    grand = sum(v[1] for v in totals.values()) or 1.0
    table = [OpTime(op, int(c), t, t / grand) for op, (c, t) in totals.items()]
    return sorted(table, key=lambda row: row.total_us, reverse=True)


def save_optimized(path: Union[str, Path], out: Union[str, Path], threads: int = 0, opt_level: str = "all",
                   providers=None) -> Path:
    """Write ORT's optimised graph (what ``edgecnn compile --backend ort`` produces) atomically."""
    out = Path(out)
    with atomic_path(out, suffix=".onnx") as tmp:
        OrtRunner(path, threads=threads, opt_level=opt_level, providers=providers, optimized_model_path=str(tmp))
    return out
