"""FP32 ONNX -> FP16 ONNX, for TensorRT's strongly typed networks.

TensorRT 10 chose layer precisions itself (``--fp16`` builder flag); TensorRT 11 builds
strongly typed networks only, where every tensor's type comes from the ONNX file. An FP16
engine therefore needs an FP16 graph: weights stored as float16, and, with ``keep_io_fp32``,
Cast nodes at the graph inputs/outputs so an application keeps feeding float32 images.

Hand-written with ``onnx.helper`` (onnxconverter-common is not a dependency of edgecnn);
it covers the op set of the exported CNNs: float initializers and Constant tensors become
float16, internal ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``, and tensors that ONNX
requires in float32 (Resize scales/roi) stay float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export.finalize import finalize
from edgecnn.export.metadata import KEY_PRECISION, set_metadata

FP16_MAX = float(np.finfo(np.float16).max)

# (op_type, input index) whose float tensors the ONNX spec keeps in float32.
KEEP_FP32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def _to_fp16_array(array: np.ndarray) -> np.ndarray:
    """float32 -> float16 with values beyond the float16 range clipped (not turned into inf)."""
    return np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)


def convert_model_to_fp16(model, keep_io_fp32: bool = True):
    """Return a float16 copy of an FP32 ``onnx.ModelProto`` (see module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if any(node.op_type in QUANT_OPS for node in model.graph.node):
        raise UserError("this ONNX model is already quantized (Q/DQ nodes); convert the FP32 export to FP16 instead")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

    keep_fp32 = {node.input[i] for node in graph.node for (op, i) in KEEP_FP32_INPUTS
                 if node.op_type == op and len(node.input) > i and node.input[i]}

    for init in graph.initializer:
        if init.data_type == FLOAT and init.name not in keep_fp32:
            init.CopyFrom(numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(init)), init.name))

    for node in graph.node:
        for attr in node.attribute:
            if node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value" and attr.t.data_type == FLOAT:
                if node.output[0] in keep_fp32:
                    continue
                attr.t.CopyFrom(numpy_helper.from_array(_to_fp16_array(numpy_helper.to_array(attr.t)), attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT and node.output[0] not in keep_fp32:
                attr.i = HALF

    graph_inputs = {i.name for i in graph.input}
    float_inputs = [i for i in graph.input if i.type.tensor_type.elem_type == FLOAT and i.name not in
                    {init.name for init in graph.initializer}]
    float_outputs = [o for o in graph.output if o.type.tensor_type.elem_type == FLOAT]
    prologue, epilogue = [], []
    if keep_io_fp32:
        for value in float_inputs:
            inner = value.name + "_fp16"
            for node in graph.node:
                for k, name in enumerate(node.input):
                    if name == value.name:
                        node.input[k] = inner
            prologue.append(helper.make_node("Cast", [value.name], [inner], name=value.name + "_to_fp16", to=HALF))
        for value in float_outputs:
            inner = value.name + "_fp16"
            for node in graph.node:
                for k, name in enumerate(node.output):
                    if name == value.name:
                        node.output[k] = inner
                for k, name in enumerate(node.input):
                    if name == value.name:
                        node.input[k] = inner
            epilogue.append(helper.make_node("Cast", [inner], [value.name], name=value.name + "_to_fp32", to=FLOAT))
    else:
        for value in float_inputs + float_outputs:
            value.type.tensor_type.elem_type = HALF
    nodes = prologue + list(graph.node) + epilogue
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # float32 annotations are stale; shape inference fills them again
    assert graph_inputs == {i.name for i in graph.input}
    return model


def to_fp16(
    onnx_in: Union[str, Path],
    onnx_out: Union[str, Path],
    keep_io_fp32: bool = True,
    check: bool = True,
    inputs: Optional[np.ndarray] = None,
    min_agreement: float = 1.0,
    max_rel_error: float = 0.05,
    overwrite: bool = True,
) -> Path:
    """Write an FP16 copy of ``onnx_in`` to ``onnx_out`` (atomically) and return its path.

    With ``check`` the FP16 model is run in ONNX Runtime next to the FP32 one on ``inputs``
    (default: 8 seeded random inputs) and must agree in top-1 on ``min_agreement`` of the
    inputs and stay within ``max_rel_error`` of the largest logit, else ParityError.
    """
    import onnx

    from edgecnn.export.parity import ParityError, compare_outputs, onnx_input_shape, random_inputs, run_onnx

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if not onnx_in.is_file():
        raise UserError(f"ONNX file '{onnx_in}' does not exist; export one with: edgecnn export MODEL -o {onnx_in.name}")
    if onnx_out.exists() and not overwrite:
        raise UserError(f"'{onnx_out}' already exists; pass --force to overwrite it")
    model = onnx.load(str(onnx_in))
    half = convert_model_to_fp16(model, keep_io_fp32=keep_io_fp32)
    set_metadata(half, {KEY_PRECISION: "fp16"})
    half = onnx.shape_inference.infer_shapes(half)

    def verify(staging: Path) -> None:
        batch = inputs if inputs is not None else random_inputs(onnx_input_shape(onnx_in), count=8, seed=0)
        report = compare_outputs(
            run_onnx(onnx_in, batch), run_onnx(staging, batch), atol=None, rtol=None, min_agreement=min_agreement
        )
        if report.max_rel_error > max_rel_error:
            report.passed = False
            report.reasons.append(f"max rel error {report.max_rel_error:.3g} above {max_rel_error:g}")
        if not report.passed:
            raise ParityError(f"FP16 model disagrees with FP32: {'; '.join(report.reasons)} ({report.summary()})")

    finalize(half, onnx_out, "the FP16 graph", verify if check else None,
             suffix=".fp16-check.onnx")
    return onnx_out
