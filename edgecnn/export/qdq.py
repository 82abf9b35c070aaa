"""Q/DQ ONNX export of a quantized model, one artifact per deployment target.

The fake-quantized PyTorch model (``edgecnn.passes.quantize``) is switched to the target's
integer encoding (:mod:`edgecnn.targets`), its weights are baked onto their grid and
it is traced with the TorchScript exporter, which writes QuantizeLinear/DequantizeLinear for
every quantizer. Then:

* every weight ``QuantizeLinear(float initializer)`` is folded into an int8 initializer
  feeding its DequantizeLinear (per-channel, axis 0), so the file is int8-sized: a plain
  fake-quant export keeps the float weights (about 4x larger). 6/4-bit weights are int8
  initializers holding -31..31 / -7..7 (ONNX and the exporters only know 8-bit ranges);
* identical Q/DQ pairs on one tensor are merged (a residual Add and the conv reading the
  same tensor share one quantizer);
* ``trt`` exports are linted against TensorRT's placement rules (:mod:`trt_rules`);
* ONNX Runtime (CPU) is run against the PyTorch model in the same encoding on real inputs
  (max abs/rel error, top-1 agreement); a disagreement fails the export.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgecnn.errors import UserError
from edgecnn.targets import DEFAULT_TARGET, QuantTarget, get_target


class QDQLintError(UserError):
    """A trt export breaks TensorRT's Q/DQ placement rules."""


@dataclass
class QDQExport:
    path: Path
    target: str
    size_bytes: int
    weight_bytes_int8: int
    parity: object = None  # edgecnn.export.parity.ParityReport
    violations: list = field(default_factory=list)


def _constant(graph_model, name: str):
    from edgecnn.export.onnx_export import _constant_values

    return _constant_values(graph_model, name)


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
        scale = np.asarray(_constant(model, node.input[1]), dtype=np.float32)
        zero = np.asarray(_constant(model, node.input[2])) if len(node.input) > 2 else np.zeros_like(scale, dtype=np.uint8)
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
        zero = _constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zero is not None and np.any(zero != 0):
            continue
        if ints.size and int(np.abs(ints.astype(np.int16)).max()) <= above:
            continue
        scale = np.asarray(_constant(model, node.input[1]))
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
    1.28 M values, about 0.4 ms at batch 1). QLinearConv needs no such rewrite: ORT quantizes
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
        scale_a = np.asarray(_constant(model, dq_a.input[1]), dtype=np.float64)
        scale_b = np.asarray(_constant(model, dq_b.input[1]), dtype=np.float64)
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
        amounts = _constant(model, pad.input[1]) if len(pad.input) > 1 and pad.input[1] else None
        value = _constant(model, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        axes = _constant(model, pad.input[3]) if len(pad.input) > 3 and pad.input[3] else None
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
        scale = _constant(model, node.input[1])
        zero = _constant(model, node.input[2]) if len(node.input) > 2 else None
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


def _int8_weight_bytes(model) -> int:
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.data_type in (2, 3))


def prepare_for_target(model, target: Union[str, QuantTarget]):
    """A copy of the quantized model in ``target``'s encoding with weights baked (for parity)."""
    from edgecnn.passes.quant.quantizers import bake_weights, quantizers, set_target

    module = getattr(model, "module", model)
    if not quantizers(module):
        raise UserError("export_qdq needs a quantized model; run the quantize pass first (or use --target fp32)")
    clone = copy.deepcopy(module).eval()
    set_target(clone, target)
    bake_weights(clone)
    return clone


def quantized_parity(onnx_path, model, inputs, input_shape, target: QuantTarget, min_agreement: float = 0.9):
    """ORT (CPU EP) vs the PyTorch fake-quant model in the same encoding.

    Quantized outputs differ elementwise by design (a value on a rounding tie may land one
    level apart and propagate), so pass/fail is top-1 agreement; the errors are reported.
    On the machine a target is meant for (ort-x86 here on x86) ORT runs with full graph
    optimisation, i.e. its int8 kernels as deployed; otherwise (trt, ort-arm on x86) with
    optimisation off: the reference Q/DQ semantics, since ORT's x86 kernels are not what
    TensorRT or an ARM board will run.
    """
    import platform

    import onnxruntime as ort

    from edgecnn.export.parity import _as_array, compare_outputs, random_inputs, run_torch

    array = random_inputs(input_shape, count=4) if inputs is None else _as_array(inputs)
    reference = run_torch(model, array)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if platform.machine().lower() not in target.runtime_arch:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    static = session.get_inputs()[0].shape[0]
    step = static if isinstance(static, int) else 16
    outs = []
    for i in range(0, len(array), step):
        chunk = array[i:i + step]
        if isinstance(static, int) and len(chunk) < static:
            chunk = np.concatenate([chunk, np.zeros((static - len(chunk), *chunk.shape[1:]), np.float32)])
        outs.append(session.run(None, {name: chunk})[0][: len(array[i:i + step])])
    report = compare_outputs(reference, np.concatenate(outs), atol=None, rtol=None, min_agreement=min_agreement)
    return report.raise_if_failed(f"Q/DQ export for {target.name}")


def export_qdq_report(
    model,
    path: Union[str, Path],
    target: Union[str, QuantTarget] = DEFAULT_TARGET,
    input_shape=(1, 3, 224, 224),
    opset: int = 17,
    metadata: Optional[dict] = None,
    parity_inputs=None,
    parity: bool = True,
    min_agreement: float = 0.9,
    batch: Union[int, str] = 1,
    overwrite: bool = True,
) -> QDQExport:
    """:func:`export_qdq` returning the parity report, lint result and sizes too."""
    import onnx

    from edgecnn.export import onnx_export
    from edgecnn.export.metadata import KEY_INPUT_NAME, KEY_OUTPUT_NAME, KEY_PRECISION, atomic_save, model_metadata, set_metadata
    from edgecnn.export.trt_rules import lint

    target = get_target(target)
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"'{path}' already exists; pass --force to overwrite it or choose another -o path")
    if path.suffix.lower() != ".onnx":
        raise UserError(f"output '{path}' should end in .onnx; e.g. -o {path.with_suffix('.onnx').name}")
    opset = onnx_export._check_opset(opset)
    if opset < 13:
        raise UserError("Q/DQ export needs opset 13 or later (per-channel DequantizeLinear)")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise UserError(f"input shape must be N,C,H,W (4 numbers), got {input_shape}")
    static_batch = onnx_export._batch_dim(batch)
    clone = prepare_for_target(model, target)

    import warnings

    import torch

    with warnings.catch_warnings():
        # Quantizer ranges become constants of the traced graph: that is the point.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        proto = onnx_export._trace_to_proto(clone, (static_batch or 2, *shape[1:]), opset, dynamic=static_batch is None)
    onnx_export.use_global_average_pool(proto)
    fold_constants(proto)
    fold_pad_into_conv(proto)
    fold_weight_quantizers(proto)
    merge_duplicate_qdq(proto)
    if target.weight_dtype == "uint8":
        store_weights_unsigned(proto, target.signed_weights_max)
    if target.int32_gemm_bias:
        quantize_gemm_bias(proto)

    from edgecnn.passes.quant.quantizers import quant_layers

    bits = sorted({layer.weight_bits for _, layer in quant_layers(clone) if layer.weight_bits})
    precision = "int8" if bits == [8] else "w" + "/".join(map(str, bits)) + "a8"
    values = model_metadata(model if hasattr(model, "preprocess") else None)
    values.update(
        {
            KEY_INPUT_NAME: onnx_export.INPUT_NAME,
            KEY_OUTPUT_NAME: onnx_export.OUTPUT_NAME,
            KEY_PRECISION: precision,
            "edgecnn.quant_target": target.name,
            "edgecnn.activation_dtype": target.activation_dtype,
        }
    )
    values.update(metadata or {})
    set_metadata(proto, values)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"the Q/DQ ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from None

    violations = lint(proto) if target.trt_lint else []
    if violations:
        shown = "; ".join(str(v) for v in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        raise QDQLintError(f"{path.name} breaks TensorRT Q/DQ placement rules: {shown}{more}")

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.{os.getpid()}.qdq.onnx")
    report = None
    try:
        atomic_save(proto, staging)
        if parity:
            report = quantized_parity(staging, clone, parity_inputs, shape, target, min_agreement)
        os.replace(staging, path)
    finally:
        if staging.exists():
            staging.unlink()
    return QDQExport(path, target.name, path.stat().st_size, _int8_weight_bytes(proto), report, violations)


def export_qdq(
    model,
    path: Union[str, Path],
    target: Union[str, QuantTarget] = DEFAULT_TARGET,
    input_shape=(1, 3, 224, 224),
    opset: int = 17,
    metadata: Optional[dict] = None,
    parity_inputs=None,
    parity: bool = True,
    min_agreement: float = 0.9,
    overwrite: bool = True,
) -> Path:
    """Export a quantized model (nn.Module or LoadedModel) as a Q/DQ ONNX file for ``target``.

    ``target``: ``ort-x86`` (u8 activations), ``ort-arm`` (s8), ``trt`` (s8, zero-point 0,
    placement-linted). Weights are int8 initializers + per-channel DequantizeLinear. Parity
    against the PyTorch model in the same encoding runs on ``parity_inputs`` (NCHW array or
    batches; default seeded random inputs) and raises ParityError when top-1 agreement is
    below ``min_agreement`` (ties excluded).
    """
    return export_qdq_report(
        model, path, target, input_shape=input_shape, opset=opset, metadata=metadata,
        parity_inputs=parity_inputs, parity=parity, min_agreement=min_agreement, overwrite=overwrite,
    ).path
