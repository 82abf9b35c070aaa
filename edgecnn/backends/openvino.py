"""OpenVINO backend: the CPU plugin reading an ONNX file, with explicit threads and f32 precision.

The runner has :class:`edgecnn.backends.ort.OrtRunner`'s interface (``input_shape``,
``static_batch``, ``input_for``, ``run``, ``run_callable``), so the one timer, accuracy and the
search take either runtime. Two settings matter for honest numbers:

* ``INFERENCE_PRECISION_HINT`` is pinned to f32: on CPUs with bf16 or AMX units the plugin
  otherwise runs the float parts of a model (and a whole FP32 model) in bf16, a different
  numeric result from the artifact's semantics;
* every input shape gets its own compiled model with static shapes (what the plugin runs
  fastest; a dynamic batch compiles slower kernels), cached per shape.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgecnn.backends.shapes import InputShape
from edgecnn.errors import UserError
from edgecnn.fileio import atomic_path, private_temp_dir
from edgecnn.lazy import lazy_import

_openvino = lazy_import("openvino", extra="openvino")


def compile_config(threads: int) -> dict:
    """The plugin's settings: latency hint, one stream, f32 inference, ``threads`` (0: its default)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}
    if threads < 0:
        raise UserError(f"thread count {threads} is not valid; give 0 (OpenVINO's default) or a positive number")
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    return config


class OvRunner(InputShape):
    """One ONNX file in OpenVINO's CPU plugin. ``OvRunner(path, threads=2).run(batch) -> first output``."""

    def __init__(self, path: Union[str, Path], threads: int = 0):
        ov = _openvino.load()
        self.path, self.threads = Path(path), int(threads)
        if not self.path.is_file():
            raise UserError(f"ONNX file '{self.path}' does not exist; check the path")
        self.config = compile_config(self.threads)
        self.core = ov.Core()
        try:
            model = self.core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses
            raise UserError(f"OpenVINO cannot read '{self.path}': {str(exc).splitlines()[0][:300]}") from None
        shape = model.input(0).get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(shape)]
        self.input_dtype = np.float32
        self._model = model  # read once; each input shape compiles a reshaped clone
        self._requests: dict[tuple, object] = {}

    def _request(self, shape: tuple):
        if shape not in self._requests:
            model = self._model.clone()
            try:
                model.reshape(list(shape))
                compiled = self.core.compile_model(model, "CPU", self.config)
            except Exception as exc:
                raise UserError(f"OpenVINO cannot compile '{self.path}' for input {list(shape)}: "
                                f"{str(exc).splitlines()[0][:300]}") from None
            self._requests[shape] = compiled.create_infer_request()
        return self._requests[shape]

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        request = self._request(tuple(x.shape))
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    def run_callable(self, batch: np.ndarray):
        """A zero-argument function running one inference (what the latency loop times)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        request = self._request(tuple(x.shape))
        feed = {0: x}
        return lambda: request.infer(feed)

    def runtime_precision(self) -> Optional[str]:
        """The compiled model's inference precision ("f32" as configured); None before a compile."""
        for request in self._requests.values():
            precision = request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
            return getattr(precision, "to_string", lambda: str(precision))()
        return None


def save_ir(path: Union[str, Path], out: Union[str, Path]) -> list[Path]:
    """OpenVINO's own model files for an ONNX file (``out`` .xml and its .bin, what ``edgecnn
    compile --backend openvino`` writes): the device then skips reading ONNX. Both written atomically."""
    ov = _openvino.load()
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise UserError(f"an OpenVINO model is an .xml file with its .bin beside it; give -o {out.with_suffix('.xml').name}")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:
        raise UserError(f"OpenVINO cannot read '{path}': {str(exc).splitlines()[0][:300]}") from None
    folder = Path(private_temp_dir("edgecnn-openvino-"))
    try:
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        for suffix in (".bin", ".xml"):  # the .xml last: it is what a reader opens
            with atomic_path(out.with_suffix(suffix)) as tmp:
                shutil.copyfile(folder / f"model{suffix}", tmp)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [out, out.with_suffix(".bin")]
