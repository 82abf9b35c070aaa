"""ONNX Runtime engines: FP32, its own quantize_static, and running any ONNX artifact."""

from __future__ import annotations

import glob
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from engines.common import calibration_arrays, peak_rss_mb, rss_mb


def session_options(threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


class OrtRunner:
    """One InferenceSession on the CPU provider; ``run`` returns the first output (logits)."""

    def __init__(self, path: str, threads: int):
        import onnxruntime as ort

        self.path = path
        self.threads = threads
        self.session = ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def op_profile(self, x: np.ndarray, iters: int, work_dir: str) -> dict:
        """Per op type: ms per inference and node count, from ORT's own profiler (after warm-up)."""
        import onnxruntime as ort

        prefix = os.path.join(work_dir, f"ortprof_{os.getpid()}")
        session = ort.InferenceSession(
            self.path, session_options(self.threads, prefix), providers=["CPUExecutionProvider"]
        )
        for _ in range(3):
            session.run(None, {self.input_name: x})
        start_ns = time.perf_counter_ns()
        for _ in range(iters):
            session.run(None, {self.input_name: x})
        wall_ms = (time.perf_counter_ns() - start_ns) / 1e6 / iters
        profile_file = session.end_profiling()
        events = json.loads(Path(profile_file).read_text())
        Path(profile_file).unlink(missing_ok=True)
        run_count = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        warm_runs = max(1, run_count - iters) if run_count > iters else 0
        # Keep only the node events of the timed runs: skip the nodes of the warm-up runs.
        node_events = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        per_run = len(node_events) // max(1, run_count)
        node_events = node_events[warm_runs * per_run:] if per_run else node_events
        totals: dict[str, float] = defaultdict(float)
        nodes: dict[str, set] = defaultdict(set)
        per_node: dict[tuple, float] = defaultdict(float)
        for event in node_events:
            op = event.get("args", {}).get("op_name", "?")
            totals[op] += event.get("dur", 0) / 1e3  # us -> ms
            nodes[op].add(event["name"])
            per_node[(event["name"].removesuffix("_kernel_time"), op)] += event.get("dur", 0) / 1e3
        timed_runs = max(1, run_count - warm_runs)
        slowest = sorted(per_node, key=per_node.get, reverse=True)[:20]
        return {
            "wall_ms": wall_ms,
            "slowest_nodes": [{"node": n, "op": op, "ms": per_node[(n, op)] / timed_runs} for n, op in slowest],
            "ops": {
                op: {"ms": totals[op] / timed_runs, "nodes": len(nodes[op])}
                for op in sorted(totals, key=totals.get, reverse=True)
            },
        }


def open_onnx(job: dict, artifact: dict):
    return OrtRunner(artifact["path"], job["threads"])


def build_quantize_static(job: dict) -> dict:
    """onnxruntime.quantization.quantize_static as its docs recommend: pre-process, then QDQ,
    u8 activations, s8 per-channel weights, MinMax calibration on the shared calibration images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    arrays = calibration_arrays(job)
    import onnx

    input_name = onnx.load(job["fp32_onnx"], load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(arrays)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {input_name: item}

    work = Path(job["work_dir"])
    pre = work / f"{job['model']}.qstatic_pre.onnx"
    out = work / f"{job['model']}.qstatic.onnx"
    rss_before = rss_mb()
    start = time.perf_counter()
    quant_pre_process(job["fp32_onnx"], str(pre))
    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
    )
    seconds = time.perf_counter() - start
    for leftover in glob.glob(str(work / "augmented_model*.onnx")):
        os.unlink(leftover)
    return {
        "path": str(out), "calib_seconds": seconds, "calib_peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before, "onnx_bytes": out.stat().st_size,
        "config": "quant_pre_process + quantize_static(QDQ, QUInt8 act, QInt8 per-channel weights, MinMax)",
    }
