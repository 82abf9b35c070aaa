"""Deployment targets, as data: everything edgecnn does differently per target is a field here.

A target says how calibrated activation ranges become integers (integer type, one-sided or
symmetric for non-negative tensors), how weights are stored, which runtime runs the
artifact, whether an engine file is built, which lint runs on every export, which exact form
a shift layer is exported in, and how accuracy and latency can be measured on a CPU. Adding a
target is adding an entry to :data:`TARGETS` (plus its encoder, if its encoding is new), not
an ``if`` elsewhere. This module is at the bottom of edgecnn: it imports nothing but errors.

Encodings and why (measurements: docs/quantization.md and bench/results/quantization.md):

* ``ort-x86``: uint8 activations. ONNX Runtime's x86 kernels (MLAS) run int8 convolutions
  with u8 activations; signed activations fall back to slower paths. Non-negative tensors use
  zero-point 0 (256 levels, and ORT can drop the ReLU into the QuantizeLinear); signed tensors
  use zero-point 128, the same grid as s8 zero-point 0. AVX2 machines without VNNI compute
  u8 x s8 pairs with VPMADDUBSW, whose int16 sums saturate when 255 * (|w1| + |w2|) > 32767,
  which visibly changes answers with full 8-bit s8 weights. So a weight tensor whose largest
  |q| exceeds 64 is stored as uint8 with zero-point 128 (U8U8: the same symmetric grid, slower
  kernels); 7/6/4-bit weights (|q| <= 63) stay s8 and run on the faster U8S8 kernels
  (``signed_weights_max``); depthwise weights always stay s8 (MLAS's depthwise kernel
  accumulates in int32). So ``bits=8`` keeps full 8-bit weights (accuracy first) and ``bits=7``
  (ORT's reduce_range grid) is the fast choice on such CPUs. Both Add inputs and the
  global-pool input are quantized too (``extra_quantizers``) so ORT fuses
  QLinearConv/QLinearAdd/QLinearGlobalAveragePool.
* ``ort-arm``: int8 activations. ORT's ARM64 kernels use the signed dot-product instructions
  (SDOT/SMMLA) natively and ORT recommends S8S8 for QDQ models there. Non-negative tensors use
  zero-point -128 (the same 256-level grid as ``ort-x86``, so both ORT artifacts compute
  identical values), signed ones zero-point 0.
* ``trt``: int8, zero-point 0, symmetric everywhere (TensorRT's explicit quantization only
  supports symmetric int8); every export is linted against TensorRT's placement rules. On a
  CPU its accuracy is measured in the reference Q/DQ semantics (ONNX Runtime with graph
  optimizations off: DequantizeLinear -> float op -> QuantizeLinear, what TensorRT computes),
  because ORT's fused x86 int8 kernels saturate with signed-int8 activations on CPUs without
  VNNI; and its CPU latency says nothing about the engine on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Union

from edgecnn.errors import UserError

Backend = Literal["ort", "tensorrt"]
CpuAccuracy = Literal["optimized", "reference"]


@dataclass(frozen=True)
class QuantTarget:
    name: str
    activation_dtype: str  # "uint8" | "int8"
    one_sided_nonnegative: bool  # non-negative tensors use all 256 levels (zero-point = qmin)
    weight_dtype: str = "int8"  # "uint8": the same grid stored with zero-point 128 (U8U8)
    # With weight_dtype "uint8": weights whose largest |q| is at most this stay s8 (U8S8).
    signed_weights_max: int = 0
    runtime_arch: tuple[str, ...] = ()  # machines where ORT's own int8 kernels are the deployment
    # Roles of the optional quantizers (edgecnn.passes.quant.placement) this target enables:
    # "add_weighted_input" (both Add inputs quantized: QLinearAdd, and the conv feeding
    # the Add fuses into QLinearConv), "pool_input" (QLinearGlobalAveragePool).
    extra_quantizers: frozenset = frozenset()
    # Store a dequantized Gemm's bias as int32 so ONNX Runtime fuses the classifier to QGemm.
    int32_gemm_bias: bool = False
    backend: Backend = "ort"  # the runtime that runs the artifact on the device
    # Engine built by `compile`: None when the runtime compiles the ONNX graph as it loads it.
    engine: Optional[Literal["tensorrt"]] = None
    trt_lint: bool = False  # every Q/DQ export is checked against TensorRT's placement rules
    # Exact export form of a shift layer (edgecnn.passes.shift) and where that choice comes from.
    shift_deploy: Literal["onehot_dwconv", "pad_slice"] = "onehot_dwconv"
    shift_deploy_basis: str = ""
    # How `measure` evaluates accuracy on a CPU: "optimized" = ONNX Runtime with its graph
    # optimizations (its int8 kernels, as deployed); "reference" = optimizations off, i.e.
    # DequantizeLinear -> float op -> QuantizeLinear, the semantics the device computes.
    cpu_accuracy: CpuAccuracy = "optimized"
    cpu_latency_meaningful: bool = True  # does ORT CPU latency predict the deployed latency?
    description: str = ""

    @property
    def qmin(self) -> int:
        return 0 if self.activation_dtype == "uint8" else -128

    @property
    def qmax(self) -> int:
        return 255 if self.activation_dtype == "uint8" else 127

    def activation_encoding(self, nonnegative: bool) -> tuple[int, int, int, int]:
        """(levels above zero-point used for the range, zero_point, qmin, qmax) for one tensor.

        The scale is ``amax / levels``: 255 for a one-sided tensor, 127 for a symmetric one.
        """
        if nonnegative and self.one_sided_nonnegative:
            return 255, self.qmin, self.qmin, self.qmax
        zero_point = 128 if self.activation_dtype == "uint8" else 0
        return 127, zero_point, self.qmin, self.qmax


# ORT fuses DQ -> op -> Q into QLinear* only where every input and the output are quantized.
_ORT_FUSION_QUANTIZERS = frozenset({"add_weighted_input", "pool_input"})
_SHIFT_MEASURED = "measured (ORT CPU, bench/shift_distill.py; bench/results/shift_distill.md)"

TARGETS: dict[str, QuantTarget] = {
    "ort-x86": QuantTarget(
        "ort-x86", "uint8", True, weight_dtype="uint8", signed_weights_max=64,
        runtime_arch=("x86_64", "amd64"), extra_quantizers=_ORT_FUSION_QUANTIZERS, int32_gemm_bias=True,
        shift_deploy_basis=_SHIFT_MEASURED,
        description="ONNX Runtime x86: u8 activations, u8 per-channel weights (zero-point 128, no VPMADDUBSW saturation)",
    ),
    "ort-arm": QuantTarget(
        "ort-arm", "int8", True, runtime_arch=("aarch64", "arm64"), extra_quantizers=_ORT_FUSION_QUANTIZERS,
        int32_gemm_bias=True, shift_deploy_basis="not measured: same MLAS depthwise kernel as x86",
        description="ONNX Runtime ARM64: s8 activations (S8S8), s8 per-channel weights",
    ),
    "trt": QuantTarget(
        "trt", "int8", False, backend="tensorrt", engine="tensorrt", trt_lint=True,
        shift_deploy_basis="not measured: TensorRT fuses depthwise conv; Slice+Concat are copies",
        cpu_accuracy="reference", cpu_latency_meaningful=False,
        description="TensorRT explicit quantization: symmetric s8, zero-point 0",
    ),
}

DEFAULT_TARGET = "ort-x86"  # recipes and exports that name no target
# The encoding of an activation quantizer before any target is chosen: symmetric s8, zero-point 0.
UNTARGETED_ENCODING = "trt"


def target_names() -> tuple[str, ...]:
    return tuple(TARGETS)


def get_target(name: Union[str, QuantTarget]) -> QuantTarget:
    """The table entry for ``name``; a UserError listing the valid names otherwise."""
    if isinstance(name, QuantTarget):
        return name
    if name not in TARGETS:
        raise UserError(f"unknown quantization target '{name}'; valid targets: {', '.join(TARGETS)}")
    return TARGETS[name]


def check_targets(names: Iterable[str], where: str = "targets") -> list[str]:
    """Every name validated against the table (one line naming the first bad one)."""
    names = list(names)
    for i, name in enumerate(names):
        if name not in TARGETS:
            raise UserError(f"{where}[{i}]: unknown target {name!r}; valid targets: {', '.join(TARGETS)}")
    return names


def shift_deploy_form(name: str) -> str:
    """The shift deploy form of target ``name``, or of the targets running on backend ``name``."""
    if name in TARGETS:
        return TARGETS[name].shift_deploy
    forms = {t.shift_deploy for t in TARGETS.values() if t.backend == name}
    if len(forms) != 1:
        backends = sorted({t.backend for t in TARGETS.values()})
        raise UserError(f"no shift deploy form known for '{name}'; valid: {', '.join([*TARGETS, *backends])}")
    return forms.pop()
