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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export.finalize import check_input_shape, check_output, finalize
from edgecnn.export.metadata import set_metadata
from edgecnn.export.qdq_rewrites import (
    fold_constants,
    fold_pad_into_conv,
    fold_weight_quantizers,
    int8_weight_bytes,
    merge_duplicate_qdq,
    quantize_gemm_bias,
    quantize_max_pool_inputs,
    store_weights_unsigned,
)
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
    On a CPU of a class the target is for (``cpu_classes``: ort-x86 here on x86) ORT runs with
    full graph optimisation, i.e. its int8 kernels as deployed; otherwise (trt, ort-arm on
    x86, ort-x86-vnni on an AVX2-only CPU) with optimisation off: the reference Q/DQ semantics,
    since this CPU's kernels are not what TensorRT, an ARM board or a VNNI CPU will run.
    """
    import onnxruntime as ort

    from edgecnn import cpu

    from edgecnn.export.parity import _as_array, compare_outputs, random_inputs, run_torch

    array = random_inputs(input_shape, count=4) if inputs is None else _as_array(inputs)
    reference = run_torch(model, array)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if target.accuracy_semantics_on(cpu.host_class()) == "reference":
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
    fp16_rest: bool = False,
) -> QDQExport:
    """Export a quantized model (nn.Module or LoadedModel) as a Q/DQ ONNX file for ``target``;
    returns the path with the parity report, lint result and sizes.

    ``target``: ``ort-x86`` (u8 activations), ``ort-arm`` (s8), ``trt`` (s8, zero-point 0,
    placement-linted). Weights are int8 initializers + per-channel DequantizeLinear. Parity
    against the PyTorch model in the same encoding runs on ``parity_inputs`` (NCHW array or
    batches; default seeded random inputs) and raises ParityError when top-1 agreement is
    below ``min_agreement`` (ties excluded). ``fp16_rest`` (targets with a TensorRT engine):
    the float layers between the Q/DQ pairs in float16 with explicit casts
    (:mod:`edgecnn.export.trt_fp16`), for TensorRT's strongly typed networks.
    """
    from edgecnn.export import onnx_export
    from edgecnn.export.trt_rules import lint

    target = get_target(target)
    path = check_output(path, overwrite)
    opset = onnx_export._check_opset(opset)
    if opset < 13:
        raise UserError("Q/DQ export needs opset 13 or later (per-channel DequantizeLinear)")
    shape = check_input_shape(input_shape)
    static_batch = onnx_export._batch_dim(batch)
    clone = prepare_for_target(model, target)
    proto = _trace_qdq(clone, (static_batch or 2, *shape[1:]), opset, static_batch is None, target)
    values = _qdq_metadata(model, clone, target)
    values.update(metadata or {})
    set_metadata(proto, values)
    if fp16_rest:
        if target.engine != "tensorrt":
            raise UserError(f"FP16 for the float rest is a TensorRT option; use target trt, not {target.name}")
        from edgecnn.export.trt_fp16 import qdq_rest_to_fp16

        proto = qdq_rest_to_fp16(proto)
        set_metadata(proto, {"edgecnn.float_rest": "float16"})
    violations: list = []

    def refuse_violations(checked) -> None:
        violations.extend(lint(checked) if target.trt_lint else [])
        if violations:
            shown = "; ".join(str(v) for v in violations[:5])
            more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
            raise QDQLintError(f"{path.name} breaks TensorRT Q/DQ placement rules: {shown}{more}")

    def verify(staging: Path):
        return quantized_parity(staging, clone, parity_inputs, shape, target, min_agreement)

    report = finalize(proto, path, "the Q/DQ ONNX graph", verify if parity else None, before_write=refuse_violations,
                      suffix=".qdq.onnx")
    return QDQExport(path, target.name, path.stat().st_size, int8_weight_bytes(proto), report, violations)


def _trace_qdq(clone, trace_shape, opset: int, dynamic: bool, target: QuantTarget):
    """Trace the target-encoded clone and apply the Q/DQ rewrites in export order."""
    import warnings

    import torch

    from edgecnn.export import onnx_export

    with warnings.catch_warnings():
        # Quantizer ranges become constants of the traced graph: that is the point.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        proto = onnx_export._trace_to_proto(clone, trace_shape, opset, dynamic=dynamic)
    onnx_export.use_global_average_pool(proto)
    fold_constants(proto)
    fold_pad_into_conv(proto)
    fold_weight_quantizers(proto)
    merge_duplicate_qdq(proto)
    quantize_max_pool_inputs(proto)
    if target.weight_dtype == "uint8":
        store_weights_unsigned(proto, target.signed_weights_max)
    if target.int32_gemm_bias:
        quantize_gemm_bias(proto)
    return proto


def _qdq_metadata(model, clone, target: QuantTarget) -> dict:
    """Default metadata of a Q/DQ file: the model's, plus precision (int8 or wNa8) and target."""
    from edgecnn.export import onnx_export
    from edgecnn.export.metadata import KEY_INPUT_NAME, KEY_OUTPUT_NAME, KEY_PRECISION, model_metadata
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
    return values


def export_qdq(model, path: Union[str, Path], *args, **options) -> Path:
    """:func:`export_qdq_report` (same parameters), returning only the path."""
    return export_qdq_report(model, path, *args, **options).path
