"""OpenVINO engines: FP32 (f32 precision hint) and INT8 from NNCF post-training quantization."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from engines.common import artifact_bytes, calibration_arrays, peak_rss_mb, rss_mb


def compile_config(threads: int) -> dict:
    # Without the f32 hint the CPU plugin may pick a lower inference precision on its own.
    return {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }


class OpenVinoRunner:
    """A compiled model per batch size (static shapes are what OpenVINO runs fastest)."""

    def __init__(self, path: str, threads: int):
        import openvino as ov

        self.core = ov.Core()
        self.path = path
        self.threads = threads
        self.requests = {}

    def _request(self, shape):
        if shape not in self.requests:
            model = self.core.read_model(self.path)
            model.reshape(list(shape))
            compiled = self.core.compile_model(model, "CPU", compile_config(self.threads))
            self.requests[shape] = compiled.create_infer_request()
        return self.requests[shape]

    def run(self, x: np.ndarray) -> np.ndarray:
        request = self._request(tuple(x.shape))
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    def runtime_precision(self) -> Optional[str]:
        """The compiled model's inference precision; None before any inference compiled one."""
        for request in self.requests.values():
            return str(request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT"))
        return None


def open_edgecnn_runtime(job: dict, artifact: dict):
    """An edgecnn file of an OpenVINO target, run as edgecnn measures it (edgecnn.backends.openvino)."""
    from edgecnn.backends.openvino import OvRunner

    return OvRunner(artifact["path"], job["threads"])


def open_fp32(job: dict, artifact: dict):
    return OpenVinoRunner(artifact["path"], job["threads"])


def open_ir(job: dict, artifact: dict):
    return OpenVinoRunner(artifact["path"], job["threads"])


def build_nncf_int8(job: dict) -> dict:
    """nncf.quantize on the OpenVINO model of the FP32 ONNX, defaults, same calibration images."""
    import nncf
    import openvino as ov

    arrays = calibration_arrays(job)
    work = Path(job["work_dir"])
    xml = work / f"{job['model']}.nncf_int8.xml"
    rss_before = rss_mb()
    start = time.perf_counter()
    model = ov.Core().read_model(job["fp32_onnx"])
    quantized = nncf.quantize(model, nncf.Dataset(arrays), subset_size=len(arrays))
    seconds = time.perf_counter() - start
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return {
        "path": str(xml), "calib_seconds": seconds, "calib_peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before, "onnx_bytes": artifact_bytes(xml, xml.with_suffix(".bin")),
        "config": f"nncf.quantize(subset_size={len(arrays)}, defaults: preset PERFORMANCE, per-channel weights)",
        "format": "OpenVINO IR (xml+bin)",
    }
