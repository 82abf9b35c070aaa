"""Size of an ONNX model from the file alone (no torch): bytes on disk, compressed bytes,
parameters, non-zeros and bits per weight.

Compressed size is what a download or an OTA update costs, and what pruning and weight
sharing buy: a pruned FP32 file is as large as the dense one until it is compressed: xz and gzip
(``lzma`` and ``gzip``, both in the standard library).
"""

from __future__ import annotations

import gzip
import lzma
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgecnn.errors import UserError

WEIGHT_OPS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "QLinearConv": (3, 8),
              "ConvInteger": (1,), "MatMulInteger": (1,)}
QUANT_PARAM_INPUTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2)}


@dataclass
class TensorSize:
    name: str
    dtype: str
    elements: int
    nonzeros: int
    distinct: int
    stored_bits: int  # bits per element of the stored dtype

    @property
    def distinct_bits(self) -> float:
        """Bits an index into this tensor's distinct values needs (0 for a constant tensor)."""
        return math.ceil(math.log2(self.distinct)) if self.distinct > 1 else 0.0


@dataclass
class SizeReport:
    path: str
    onnx_bytes: int
    compressed: dict[str, int]  # codec -> bytes
    params: int  # weight + bias elements of Conv/Gemm/MatMul (through DequantizeLinear)
    nonzeros: int
    sparsity: float
    stored_bits_per_weight: float  # averaged over params, from initializer dtypes
    distinct_bits_per_weight: float  # averaged ceil(log2(distinct values)) per tensor
    other_initializer_bytes: int  # quantization scales, shapes, constants
    tensors: list[TensorSize] = field(default_factory=list, repr=False)

    def to_dict(self, with_tensors: bool = False) -> dict:
        out = asdict(self)
        if not with_tensors:
            out.pop("tensors")
        return out

    def summary(self) -> str:
        codecs = ", ".join(f"{k} {v / 1e6:.3f} MB" for k, v in self.compressed.items())
        return (
            f"{Path(self.path).name}: {self.onnx_bytes / 1e6:.3f} MB ({codecs}); {self.params:,} params, "
            f"{self.nonzeros:,} non-zero ({self.sparsity * 100:.1f}% sparse), "
            f"{self.stored_bits_per_weight:.2f} stored / {self.distinct_bits_per_weight:.2f} distinct bits per weight"
        )


def compressed_sizes(data: bytes) -> dict[str, int]:
    """Bytes after xz and after gzip -9: both in the standard library, so every install reports the same columns."""
    return {"xz": len(lzma.compress(data, preset=6)), "gzip": len(gzip.compress(data, compresslevel=9, mtime=0))}


def _weight_initializers(model) -> set[str]:
    """Names of initializers that are layer weights/biases, looking through DequantizeLinear
    (and a Transpose/Reshape/Cast in between) back to the stored tensor."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = set()
    for node in model.graph.node:
        for index in WEIGHT_OPS.get(node.op_type, ()):
            if index >= len(node.input) or not node.input[index]:
                continue
            name = node.input[index]
            for _ in range(4):  # walk back through DQ / layout ops
                source = producers.get(name)
                if source is None or source.op_type not in ("DequantizeLinear", "Transpose", "Reshape", "Cast",
                                                             "Identity"):
                    break
                name = source.input[0]
            names.add(name)
    return names


def size_report(onnx_path: Union[str, Path], compress: bool = True) -> SizeReport:
    """Measure ``onnx_path`` (see module docstring)."""
    import onnx
    from onnx import numpy_helper

    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"ONNX file '{path}' does not exist; check the path")
    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError
        raise UserError(f"'{path}' is not a readable ONNX file ({type(exc).__name__})") from None
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        onnx.load_external_data_for_model(model, str(path.parent))
    weight_names = _weight_initializers(model)
    tensors, other_bytes = [], 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if init.name not in weight_names:
            other_bytes += array.nbytes
            continue
        flat = array.reshape(-1)
        tensors.append(TensorSize(
            name=init.name,
            dtype=str(array.dtype),
            elements=int(flat.size),
            nonzeros=int(np.count_nonzero(flat)),
            distinct=int(np.unique(flat).size),
            stored_bits=int(array.dtype.itemsize * 8),
        ))
    params = sum(t.elements for t in tensors)
    nonzeros = sum(t.nonzeros for t in tensors)
    stored = sum(t.stored_bits * t.elements for t in tensors) / params if params else 0.0
    distinct = sum(t.distinct_bits * t.elements for t in tensors) / params if params else 0.0
    return SizeReport(
        path=str(path),
        onnx_bytes=len(data),
        compressed=compressed_sizes(data) if compress else {},
        params=params,
        nonzeros=nonzeros,
        sparsity=1.0 - nonzeros / params if params else 0.0,
        stored_bits_per_weight=stored,
        distinct_bits_per_weight=distinct,
        other_initializer_bytes=other_bytes,
        tensors=tensors,
    )


def human_bytes(count: Optional[int]) -> str:
    if count is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"
