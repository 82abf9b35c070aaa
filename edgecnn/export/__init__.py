"""ONNX export: FP32 (``onnx_export``), parity against PyTorch (``parity``), metadata
(``metadata``), FP16 for TensorRT's strongly typed networks (``fp16``), Q/DQ per target (``qdq``).

Names are resolved lazily so that the torch-free side (eval, bench) can read metadata
without importing the exporter.
"""

from __future__ import annotations

from edgecnn.lazy import lazy_attributes

_LAZY = {
    "export_onnx": "edgecnn.export.onnx_export",
    "export_with_parity": "edgecnn.export.onnx_export",
    "use_global_average_pool": "edgecnn.export.onnx_export",
    "check_parity": "edgecnn.export.parity",
    "ParityReport": "edgecnn.export.parity",
    "ParityError": "edgecnn.export.parity",
    "read_metadata": "edgecnn.export.metadata",
    "write_metadata": "edgecnn.export.metadata",
    "to_fp16": "edgecnn.export.fp16",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
