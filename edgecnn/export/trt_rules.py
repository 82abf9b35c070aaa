"""Static lint of TensorRT's explicit-quantization (Q/DQ placement) rules on an ONNX graph.

Each rule is a small function ``rule(graph) -> list[Violation]`` naming the nodes involved,
and each enforces one statement of an NVIDIA document (``RULE_SOURCES``); a rule without a
source is not a rule. Abbreviations: *DG* = TensorRT Developer Guide, "Explicit Quantization"
chapter (docs.nvidia.com/deeplearning/tensorrt, "Working with Quantized Types" from 10.x on);
*parser* = NVIDIA's ONNX parser (github.com/onnx/onnx-tensorrt, ``builtin_op_importers.cpp``,
``QuantDequantLinearHelper``), which every TensorRT build of an ONNX file goes through.

* ``weighted_output_qdq``: a Q/DQ on a Conv/Gemm output that feeds anything but another
  quantized-input op. DG, "Q/DQ Layer-Placement Recommendations": quantize the inputs of
  weighted operations and by default not their outputs; a Q/DQ between a convolution and
  the activation after it keeps TensorRT from fusing the two.
* ``residual_add_unquantized``: an Add fed by a conv whose other (residual) input does not
  come through a DequantizeLinear. DG, same section: the precision of the residual input
  decides the precision of the fused convolution + addition, so quantize the residual input
  of a skip connection, or the fusion's output stays in floating point.
* ``concat_scales_differ``: Concat inputs not all dequantized with one scale and zero-point.
  DG, "Q/DQ propagation" / "Q/DQ Limitations": Q/DQ layers move through a concatenation only
  when the scales of its inputs' quantizers are equal; otherwise the Concat runs in float.
* ``nonzero_zero_point``: parser: "TRT only supports symmetric quantization - zeroPt must
  be all zeros" (DG, "Quantization Schemes": symmetric quantization only).
* ``uint8_quantization``: parser: QuantizeLinear/DequantizeLinear reject UINT8 tensors
  (DG: INT8 is signed).

Torch-free (runs on the bench/compile side).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops whose inputs TensorRT wants quantized: a Q/DQ feeding them is their input quantization.
QUANTIZED_INPUT_OPS = WEIGHTED_OPS + ("Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool")
SHAPE_OPS = ("Reshape", "Flatten", "Transpose", "Split", "Slice", "Squeeze", "Unsqueeze")


@dataclass
class Violation:
    rule: str
    nodes: list[str]
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {', '.join(self.nodes)}: {self.message}"


class _Graph:
    """Producer/consumer maps and constant lookup over an onnx GraphProto."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.graph = model.graph if hasattr(model, "graph") else model
        self.producer = {}
        self.consumers: dict[str, list] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, int] = {}
        for init in self.graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)
            self.dtypes[init.name] = init.data_type
        direct: dict[str, list] = {}
        for node in self.graph.node:
            for out in node.output:
                # A precision Cast is transparent to placement (an FP16-rest file casts around Q/DQ).
                cast_of = node.op_type == "Cast" and self.producer.get(node.input[0])
                self.producer[out] = cast_of or node
            for name in node.input:
                direct.setdefault(name, []).append(node)
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
                        self.dtypes[node.output[0]] = attr.t.data_type

        def users(tensor: str, depth: int = 0) -> list:
            found = []
            for node in direct.get(tensor, []):
                if node.op_type == "Cast" and depth < 4:
                    found += users(node.output[0], depth + 1)
                else:
                    found.append(node)
            return found

        self.consumers = {name: users(name) for name in direct}

    def nodes(self, op_type: str):
        return [n for n in self.graph.node if n.op_type == op_type]

    def producer_op(self, tensor: str) -> Optional[str]:
        node = self.producer.get(tensor)
        return node.op_type if node is not None else None

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def name(self, node) -> str:
        return node.name or f"{node.op_type}({node.output[0]})"

    def qparams(self, node) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        scale = self.constants.get(node.input[1]) if len(node.input) > 1 else None
        zero = self.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return scale, zero


def weighted_output_qdq(g: _Graph) -> list[Violation]:
    found = []
    for q in g.nodes("QuantizeLinear"):
        producer = g.producer.get(q.input[0])
        if producer is None or producer.op_type not in WEIGHTED_OPS:
            continue
        bad = []
        for dq in g.consumers.get(q.output[0], []):
            for user in g.consumers.get(dq.output[0], []):
                if user.op_type not in QUANTIZED_INPUT_OPS:
                    bad.append(g.name(user))
        if bad:
            found.append(
                Violation(
                    "weighted_output_qdq",
                    [g.name(producer), g.name(q)] + bad,
                    f"Q/DQ on the output of {producer.op_type} feeds {', '.join(bad)}; quantize the consumer's input instead",
                )
            )
    return found


def _through_bias(g: _Graph, tensor: str) -> Optional[str]:
    node = g.producer.get(tensor)
    while node is not None and node.op_type == "BatchNormalization":
        node = g.producer.get(node.input[0])
    return node.op_type if node is not None else None


def residual_add_unquantized(g: _Graph) -> list[Violation]:
    found = []
    for add in g.nodes("Add"):
        inputs = [t for t in add.input if not g.is_constant(t)]
        if len(inputs) != 2:
            continue
        from_conv = [_through_bias(g, t) in WEIGHTED_OPS for t in inputs]
        if not any(from_conv):
            continue
        quantized = [g.producer_op(t) == "DequantizeLinear" for t in inputs]
        # The residual is an input not computed directly by a conv; it must arrive through DQ.
        if not any(q for q, c in zip(quantized, from_conv) if not c):
            found.append(
                Violation(
                    "residual_add_unquantized",
                    [g.name(add)],
                    "the residual input of this Add has no Q/DQ, so TensorRT cannot fuse the Add into the conv in int8",
                )
            )
    return found


def concat_scales_differ(g: _Graph) -> list[Violation]:
    found = []
    for cat in g.nodes("Concat"):
        params = []
        for t in cat.input:
            producer = g.producer.get(t)
            if producer is None or producer.op_type != "DequantizeLinear":
                params.append(None)
                continue
            scale, zero = g.qparams(producer)
            params.append((None if scale is None else scale.tobytes(), None if zero is None else zero.tobytes()))
        quantized = [p for p in params if p is not None]
        if not quantized:
            continue
        if len(quantized) != len(params) or len(set(quantized)) > 1:
            found.append(
                Violation(
                    "concat_scales_differ",
                    [g.name(cat)],
                    "Concat inputs are not all dequantized with one shared scale/zero-point",
                )
            )
    return found


def nonzero_zero_point(g: _Graph) -> list[Violation]:
    bad = []
    for node in g.graph.node:
        if node.op_type in QDQ_OPS:
            _, zero = g.qparams(node)
            if zero is not None and np.any(zero != 0):
                bad.append(g.name(node))
    if not bad:
        return []
    return [Violation("nonzero_zero_point", bad, "TensorRT supports only symmetric quantization (zero-point 0)")]


def uint8_quantization(g: _Graph) -> list[Violation]:
    bad = []
    for node in g.graph.node:
        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2]:
            zero = g.constants.get(node.input[2])
            if zero is not None and zero.dtype == np.uint8:
                bad.append(g.name(node))
    if not bad:
        return []
    return [Violation("uint8_quantization", bad, "TensorRT supports only signed int8 Q/DQ; export with --target trt")]


RULE_SOURCES = {
    "weighted_output_qdq": "TensorRT Developer Guide, Explicit Quantization: Q/DQ Layer-Placement Recommendations "
                           "(quantize weighted-op inputs, not their outputs; conv + activation fusion)",
    "residual_add_unquantized": "TensorRT Developer Guide, Explicit Quantization: Q/DQ Layer-Placement "
                                "Recommendations (quantize the residual input of skip connections)",
    "concat_scales_differ": "TensorRT Developer Guide, Explicit Quantization: Q/DQ propagation and Q/DQ Limitations "
                            "(equal quantizer scales are required to move Q/DQ through a concatenation)",
    "nonzero_zero_point": "onnx-tensorrt builtin_op_importers.cpp QuantDequantLinearHelper: 'TRT only supports "
                          "symmetric quantization - zeroPt must be all zeros'",
    "uint8_quantization": "onnx-tensorrt builtin_op_importers.cpp QuantDequantLinearHelper: UINT8 inputs and zero "
                          "points are invalid types",
}

# Rules whose violation TensorRT's ONNX parser refuses outright (the others cost speed, not the build).
REJECTED_BY_TENSORRT = frozenset({"nonzero_zero_point", "uint8_quantization"})

TRT_RULES: dict[str, Callable[[_Graph], list[Violation]]] = {
    "weighted_output_qdq": weighted_output_qdq,
    "residual_add_unquantized": residual_add_unquantized,
    "concat_scales_differ": concat_scales_differ,
    "nonzero_zero_point": nonzero_zero_point,
    "uint8_quantization": uint8_quantization,
}


def lint(model, rules: Optional[list[str]] = None) -> list[Violation]:
    """All violations of ``rules`` (default: every TensorRT rule) in an ONNX model or path."""
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    g = _Graph(model)
    if not any(node.op_type in QDQ_OPS for node in g.graph.node):
        return []  # the rules are about explicit quantization; a float file has none to break
    found = []
    for name in rules or list(TRT_RULES):
        found.extend(TRT_RULES[name](g))
    return found


def gate(path) -> list[str]:
    """Before a TensorRT build of ``path``: one line (exit 2) for what TensorRT's parser rejects;
    the other findings as warning lines for the caller to print."""
    import onnx

    from edgecnn.errors import UserError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UserError(f"'{path}' is not an ONNX file ({type(exc).__name__}); pass an exported .onnx model") from None
    violations = lint(model)
    fatal = [v for v in violations if v.rule in REJECTED_BY_TENSORRT]
    if fatal:
        raise UserError(f"TensorRT would reject '{path}': {fatal[0]}; export it with --target trt "
                        f"(edgecnn lint {path} lists every rule)")
    return [f"{v} (edgecnn lint {Path(str(path)).name} gives the source)" for v in violations]
