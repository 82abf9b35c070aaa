"""FP16 for the float rest of a Q/DQ ONNX file, with explicit casts (TensorRT strongly typed networks).

A ``trt`` Q/DQ export runs its quantized layers in int8 and everything else (the unquantized
classifier, softmax, the float tails of the graph) in the file's float type. TensorRT 8.x/10.x
weakly typed builds ran that rest in FP16 when the FP16 builder flag was set; a strongly typed
network (TensorRT 10 ``STRONGLY_TYPED``, the only mode on 11.x) runs every tensor in the type
the file gives it. So to get FP16 for the rest on every release, the file must say so:

* every float weight and bias becomes float16;
* Q/DQ nodes keep float32 (opset 13-18 ``QuantizeLinear`` takes float32 only, and TensorRT 8.5
  reads opset <= 17): a ``Cast`` to float16 follows each DequantizeLinear whose output feeds a
  float op, and a ``Cast`` to float32 precedes each QuantizeLinear fed by a float16 tensor;
* the graph input and output stay float32 (casts at both ends), so the application is unchanged.

TensorRT folds a DequantizeLinear -> Cast into the quantized layer's input and a Cast ->
QuantizeLinear into its output, so the int8 layers are unchanged. Torch-free.
"""

from __future__ import annotations

import numpy as np

from edgecnn.errors import UserError

QDQ = ("QuantizeLinear", "DequantizeLinear")
FP16_MAX = float(np.finfo(np.float16).max)
# (op_type, input index) that ONNX keeps float32 (or integer): not converted, never cast.
KEEP_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1), ("QuantizeLinear", 1), ("DequantizeLinear", 1)}


def qdq_rest_to_fp16(model):
    """Return a copy of a Q/DQ ``onnx.ModelProto`` whose non-quantized float computation is float16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not any(n.op_type in QDQ for n in model.graph.node):
        raise UserError("this ONNX file has no Q/DQ nodes; for an FP16 copy of an FP32 file use "
                        "edgecnn export MODEL --precision fp16")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16

    keep = {node.input[i] for node in graph.node for (op, i) in KEEP_INPUTS
            if node.op_type == op and len(node.input) > i and node.input[i]}
    keep |= {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}  # fed by casts below
    # float constants: weights/biases of float ops become float16; scales and Q inputs stay float32
    for init in graph.initializer:
        if init.data_type == FLOAT and init.name not in keep:
            array = np.clip(numpy_helper.to_array(init), -FP16_MAX, FP16_MAX).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    half: set[str] = {i.name for i in graph.initializer if i.data_type == HALF}
    single: set[str] = {i.name for i in graph.input if i.type.tensor_type.elem_type == FLOAT}
    single |= {i.name for i in graph.initializer if i.data_type == FLOAT}
    nodes, casts = [], {}

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            out = f"{tensor}_{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [tensor], [out], name=f"{out}_cast", to=to))
            casts[key] = out
            (half if to == HALF else single).add(out)
        return casts[key]

    for node in graph.node:
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None and attr.t.data_type == FLOAT and node.output[0] not in keep:
                array = np.clip(numpy_helper.to_array(attr.t), -FP16_MAX, FP16_MAX).astype(np.float16)
                attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
                half.add(node.output[0])
            elif attr is not None and attr.t.data_type == FLOAT:
                single.add(node.output[0])
            nodes.append(node)
            continue
        if node.op_type == "QuantizeLinear":
            if node.input[0] in half:
                node.input[0] = cast(node.input[0], FLOAT)
            nodes.append(node)
            continue
        if node.op_type == "DequantizeLinear":
            nodes.append(node)
            single.add(node.output[0])
            continue
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = HALF
                half.add(node.output[0])
            nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if name in single and (node.op_type, k) not in KEEP_INPUTS:
                node.input[k] = cast(name, HALF)
        if any(name in half for name in node.input):
            half.update(node.output)
        nodes.append(node)

    _cast_outputs_back(graph, nodes, half)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 annotations; shape inference fills them again
    return model


def _cast_outputs_back(graph, nodes: list, half: set) -> None:
    """Graph outputs computed in float16 get a final Cast to float32 under their own name."""
    from onnx import TensorProto, helper

    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    renamed = {}
    for node in nodes:
        for k, name in enumerate(node.output):
            if name in outputs and name in half:
                renamed[name] = name + "_fp16"
                node.output[k] = renamed[name]
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    for name, inner in renamed.items():
        nodes.append(helper.make_node("Cast", [inner], [name], name=f"{name}_to_fp32", to=TensorProto.FLOAT))


def float_ops_precision(model) -> dict[str, int]:
    """Count of non-Q/DQ, non-Cast nodes per input float type (``{"float16": n, "float32": m}``), for checks."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    counts = {"float16": 0, "float32": 0}
    for node in inferred.graph.node:
        if node.op_type in QDQ + ("Cast", "Constant", "Shape"):
            continue
        first = types.get(node.input[0]) if node.input else None
        if first == TensorProto.FLOAT16:
            counts["float16"] += 1
        elif first == TensorProto.FLOAT:
            counts["float32"] += 1
    return counts
