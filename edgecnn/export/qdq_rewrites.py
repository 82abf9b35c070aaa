"""Rewrites of an exported Q/DQ ONNX graph: proto in, proto changed in place, a count out.

Torch-free (numpy + onnx only), so each rewrite is tested on hand-built graphs. In export
order: constants folded, Pad folded into Conv, weight QuantizeLinear folded into int8
initializers, duplicate Q/DQ pairs merged, max pools quantized at their input, then per
target: weights stored unsigned (``ort-x86``) and Gemm bias quantized to int32.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def constant_values(model, name: str) -> Optional[np.ndarray]:
    """Value of an initializer or Constant node output, or None when not constant."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _quantize_array(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear semantics (round half to even, saturate) in numpy."""
    if scale.ndim == 1 and values.ndim > 1:
        shape = [1] * values.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = zero.reshape(shape)
    info = np.iinfo(zero.dtype)
    q = np.rint(values / scale) + zero.astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zero.dtype)


def fold_weight_quantizers(model) -> int:
    """Replace QuantizeLinear(constant float weight) by an int8 initializer; returns count."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers:
            continue
        values = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float32)
        scale = np.asarray(constant_values(model, node.input[1]), dtype=np.float32)
        zero = np.asarray(constant_values(model, node.input[2])) if len(node.input) > 2 else np.zeros_like(scale, dtype=np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        ints = _quantize_array(values, scale, zero, axis)
        name = node.input[0] + "_quantized"
        graph.initializer.append(numpy_helper.from_array(ints, name))
        for user in consumers.get(node.output[0], []):
            for i, inp in enumerate(user.input):
                if inp == node.output[0]:
                    user.input[i] = name
        graph.node.remove(node)
        folded += 1
    _drop_unused_initializers(model)
    return folded


def store_weights_unsigned(model, above: int = 0) -> int:
    """Re-store int8 weight initializers feeding DequantizeLinear as uint8 + zero-point 128.

    Same values (``(q + 128) - 128``), different storage: what ONNX Runtime's U8U8 kernels
    take. Only weights whose largest ``|q|`` exceeds ``above`` are converted (the others can
    stay s8 without saturating int16 pair sums), and never depthwise weights: measured on
    MobileNetV2, s8 8-bit depthwise weights give bit-identical ORT outputs to U8U8 (its
    depthwise kernel does not use VPMADDUBSW) and run faster. Returns the number converted.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    depthwise_weights = {
        n.input[1] for n in graph.node
        if n.op_type == "Conv" and next((a.i for a in n.attribute if a.name == "group"), 1) > 1
    }
    converted = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        ints = numpy_helper.to_array(initializers[node.input[0]])
        if ints.dtype != np.int8:
            continue
        if node.output[0] in depthwise_weights and ints.ndim == 4 and ints.shape[1] == 1:
            continue  # MLAS's depthwise kernel accumulates in int32: s8 never saturates there
        zero = constant_values(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and np.any(zero != 0):
            continue
        if ints.size and int(np.abs(ints.astype(np.int16)).max()) <= above:
            continue
        scale = np.asarray(constant_values(model, node.input[1]))
        name = node.input[0] + "_u8"
        graph.initializer.append(numpy_helper.from_array((ints.astype(np.int16) + 128).astype(np.uint8), name))
        zp_name = name + "_zero_point"
        graph.initializer.append(numpy_helper.from_array(np.full(scale.shape, 128, dtype=np.uint8), zp_name))
        node.input[0] = name
        if len(node.input) > 2:
            node.input[2] = zp_name
        else:
            node.input.append(zp_name)
        converted += 1
    _drop_unused_initializers(model)
    return converted


def quantize_gemm_bias(model) -> int:
    """Store a float Gemm bias as int32 behind a DequantizeLinear (scale = input scale x weight
    scale, zero-point 0) where the Gemm's input and weight are both dequantized.

    ONNX Runtime fuses ``DQ -> Gemm`` into QGemm only when every input comes from a
    DequantizeLinear (its QDQ Gemm selector wants an int32 bias); with a float bias the
    classifier stays a float Gemm and dequantizes its whole weight on every run (MobileNetV2:
    1.28 M values; what that costs is in docs/quantization.md). QLinearConv needs no such rewrite: ORT quantizes
    conv biases itself. Rounding error of the bias is below half a step of the int32 grid.
    Returns the number of Gemms rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    rewritten = 0
    for gemm in [n for n in graph.node if n.op_type == "Gemm"]:
        if len(gemm.input) < 3 or gemm.input[2] not in initializers:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        dq_a, dq_b = producers.get(gemm.input[0]), producers.get(gemm.input[1])
        if not (dq_a is not None and dq_b is not None and dq_a.op_type == dq_b.op_type == "DequantizeLinear"):
            continue
        scale_a = np.asarray(constant_values(model, dq_a.input[1]), dtype=np.float64)
        scale_b = np.asarray(constant_values(model, dq_b.input[1]), dtype=np.float64)
        bias = numpy_helper.to_array(initializers[gemm.input[2]]).astype(np.float64)
        trans_b = attrs.get("transB", 0)
        b_axis = next((a.i for a in dq_b.attribute if a.name == "axis"), 1)
        per_column = scale_b.ndim == 1 and scale_b.size > 1
        if scale_a.size != 1 or bias.ndim != 1 or (per_column and (b_axis != (0 if trans_b else 1) or scale_b.size != bias.size)):
            continue
        scale = (scale_a.reshape(()) * scale_b).astype(np.float32).reshape(bias.shape if per_column else ())
        ints = np.clip(np.round(bias / scale.astype(np.float64)), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
        name = gemm.input[2] + "_quantized_i32"
        graph.initializer.extend([
            numpy_helper.from_array(ints, name),
            numpy_helper.from_array(scale, name + "_scale"),
            numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int32), name + "_zero_point"),
        ])
        dq = helper.make_node("DequantizeLinear", [name, name + "_scale", name + "_zero_point"], [name + "_dequantized"],
                              name=name + "_DequantizeLinear", **({"axis": 0} if per_column else {}))
        graph.node.insert(list(graph.node).index(gemm), dq)
        gemm.input[2] = dq.output[0]
        rewritten += 1
    _drop_unused_initializers(model)
    return rewritten


def _drop_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        model.graph.node.remove(node)
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    inputs = [i for i in model.graph.input if i.name in used or i.name not in {x.name for x in keep}]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


# Ops whose value is known at export time when all their inputs are: the TorchScript
# exporter leaves shape arithmetic (TF-SAME pad amounts) and Identity copies of shared
# initializers unfolded once fake-quant ops are in the graph. Q/DQ are excluded on purpose:
# weight quantizers are folded by fold_weight_quantizers, the rest must stay.
_FOLDABLE_OPS = {
    "Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast", "Identity",
    "Unsqueeze", "Squeeze", "Gather", "Add", "Sub", "Mul", "Div", "Neg", "Range", "Expand",
}


def fold_constants(model) -> int:
    """Evaluate nodes whose inputs are all constants into initializers; returns count.

    Uses onnx's reference evaluator node by node (``onnx.reference``), so every folded value
    is computed with ONNX semantics. Identity nodes on non-constant tensors are bypassed.
    """
    from onnx import TypeProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - set(constants)
    graph_outputs = {o.name for o in graph.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    folded = 0
    kept = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        foldable = (
            node.op_type in _FOLDABLE_OPS
            and node.domain in ("", "ai.onnx")
            and all(name in constants for name in inputs)
            and not any(out in graph_outputs for out in node.output)
        )
        if foldable:
            try:
                one = helper.make_model(
                    helper.make_graph([node], "fold", [], [helper.make_value_info(o, TypeProto()) for o in node.output]),
                    opset_imports=[helper.make_opsetid("", opset)],
                )
                values = ReferenceEvaluator(one).run(None, {name: constants[name] for name in inputs})
            except Exception:  # an op the reference evaluator cannot run: keep the node
                kept.append(node)
                continue
            for name, value in zip(node.output, values):
                constants[name] = np.asarray(value)
                graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            folded += 1
            continue
        kept.append(node)
    # Bypass Identity on run-time tensors (not graph outputs).
    renames = {}
    final = []
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        if node.op_type == "Identity" and node.output[0] not in graph_outputs and node.input[0] not in graph_inputs:
            renames[node.output[0]] = node.input[0]
            folded += 1
            continue
        final.append(node)
    del graph.node[:]
    graph.node.extend(final)
    _drop_unused_initializers(model)
    return folded


def fold_pad_into_conv(model) -> int:
    """``Pad(constant 0) -> Conv`` becomes one Conv with the pad amounts in its ``pads``.

    ONNX Conv takes asymmetric pads ([top, left, bottom, right]), so TF-SAME padding needs
    no Pad node: ONNX Runtime then sees ``DQ -> Conv`` and runs it as QLinearConv, and
    TensorRT's "nothing between Pad and Conv" holds trivially. Returns the number folded.
    """
    from onnx import helper

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    folded = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        users = consumers.get(pad.output[0], [])
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != pad.output[0] or pad.output[0] in graph_outputs:
            continue
        conv = users[0]
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        amounts = constant_values(model, pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
        value = constant_values(model, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        axes = constant_values(model, pad.input[3]) if len(pad.input) > 3 and pad.input[3] else None
        if mode != "constant" or amounts is None or value is None or np.any(np.asarray(value) != 0) or axes is not None:
            continue
        amounts = [int(a) for a in np.asarray(amounts).reshape(-1)]
        rank = len(amounts) // 2
        begins, ends = amounts[:rank], amounts[rank:]
        if rank < 3 or any(begins[:2]) or any(ends[:2]) or any(a < 0 for a in amounts):
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        spatial = rank - 2
        old = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * spatial)
        pads = [old[i] + begins[2 + i] for i in range(spatial)] + [old[spatial + i] + ends[2 + i] for i in range(spatial)]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", pads)])
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded += 1
    _drop_unused_initializers(model)
    return folded


def merge_duplicate_qdq(model) -> int:
    """Merge Q->DQ pairs that quantize the same tensor with the same parameters."""
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen: dict[tuple, str] = {}
    merged = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        dqs = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if len(dqs) != 1 or len(consumers.get(node.output[0], [])) != 1:
            continue
        scale = constant_values(model, node.input[1])
        zero = constant_values(model, node.input[2]) if len(node.input) > 2 else None
        if scale is None:
            continue
        key = (node.input[0], scale.tobytes(), None if zero is None else (zero.dtype.str, zero.tobytes()))
        dq = dqs[0]
        if key not in seen:
            seen[key] = dq.output[0]
            continue
        for user in consumers.get(dq.output[0], []):
            for i, inp in enumerate(user.input):
                if inp == dq.output[0]:
                    user.input[i] = seen[key]
        for output in graph.output:
            if output.name == dq.output[0]:
                break
        else:
            graph.node.remove(node)
            graph.node.remove(dq)
            merged += 1
    return merged


def quantize_max_pool_inputs(model) -> int:
    """Give a float max pool whose output is quantized a Q/DQ pair of the same parameters at its input.

    Exact: quantization is monotone, so Q(max(x)) = max(Q(x)). A runtime that does not move
    the QuantizeLinear up itself (OpenVINO) otherwise pools in float behind a float conv output;
    with the pair, the conv before the pool writes int8 and the pool runs on int8. ONNX Runtime
    and TensorRT move or fuse it alike, so their graphs are unchanged."""
    graph = model.graph
    consumers: dict[str, list] = {}
    producer: dict[str, object] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    outputs = {o.name for o in graph.output}
    added = 0
    for pool in list(graph.node):
        if pool.op_type != "MaxPool" or pool.output[0] in outputs or any(pool.output[1:]):
            continue
        source = producer.get(pool.input[0])
        if source is not None and source.op_type == "DequantizeLinear":
            continue  # already int8 at its input
        readers = consumers.get(pool.output[0], [])
        if not readers or any(r.op_type != "QuantizeLinear" for r in readers):
            continue
        params = {tuple(r.input[1:]) for r in readers}
        if len(params) != 1:
            continue
        scale, zero = (list(params)[0] + ("",))[:2]
        value = constant_values(model, scale)
        if value is None or value.size != 1:  # per-tensor activation quantizers only
            continue
        from onnx import helper

        base = pool.input[0]
        q = helper.make_node("QuantizeLinear", [base, scale] + ([zero] if zero else []), [f"{base}_pool_q"],
                             name=f"{pool.name or base}_input_quantize")
        dq = helper.make_node("DequantizeLinear", [f"{base}_pool_q", scale] + ([zero] if zero else []), [f"{base}_pool_dq"],
                              name=f"{pool.name or base}_input_dequantize")
        index = list(graph.node).index(pool)
        graph.node.insert(index, dq)
        graph.node.insert(index, q)
        pool.input[0] = f"{base}_pool_dq"
        added += 1
    return added


def int8_weight_bytes(model) -> int:
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.data_type in (2, 3))
