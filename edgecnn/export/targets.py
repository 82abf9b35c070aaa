"""Deployment targets of a quantized model, as data (one calibration, many artifacts).

A target says how the calibrated activation ranges are stored as integers: which integer
type, and whether a tensor that never goes negative (after ReLU/ReLU6) uses the full 8-bit
range one-sided or the symmetric half range. Weights are always per-channel symmetric int8
with zero-point 0. Adding a target is adding an entry here, not an ``if`` elsewhere.

Encodings and why:

* ``ort-x86``: uint8 activations. ONNX Runtime's x86 kernels (MLAS) run int8 convolutions
  with u8 activations; signed activations fall back to slower paths. Non-negative tensors use
  zero-point 0 (256 levels, and ORT can drop the ReLU into the QuantizeLinear); signed
  tensors use zero-point 128, the same grid as s8 zero-point 0. AVX2 machines without VNNI
  compute u8 x s8 pairs with VPMADDUBSW, whose int16 sums saturate when
  255 * (|w1| + |w2|) > 32767; with full 8-bit s8 weights, measured here on SqueezeNet 1.1,
  this moved logits by up to 14 and changed 19 % of top-1 answers. So a weight tensor whose
  largest |q| exceeds 64 is stored as uint8 with zero-point 128 (U8U8: the same symmetric
  grid, slower kernels); 7/6/4-bit weights (|q| <= 63) stay s8 and run on the faster U8S8
  kernels (``signed_weights_max``); depthwise weights always stay s8 (MLAS's depthwise
  kernel accumulates in int32: bit-identical outputs to U8U8 on MobileNetV2, and faster).
  Measured 2026-11-22 (AMD EPYC Zen 3, AVX2 without VNNI, ORT 2 threads, batch 1, 64
  ImageNet images; docs/quantization.md has the table): MobileNetV2 8-bit U8U8 19.0 ms
  (1.05x FP32, top-1 84.4), 7-bit s8 13.2 ms (1.50x, 84.4), quantize_static 9.5 ms (2.09x,
  82.8); SqueezeNet 1.1 8-bit U8U8 14.5 ms (1.17x, 75.0), 7-bit s8 9.8 ms (1.73x, 73.4),
  6-bit s8 8.7 ms (1.95x, 78.1), quantize_static 11.0 ms (1.55x, 71.9). So ``bits=8`` keeps
  full 8-bit weights (accuracy first) and
  ``bits=7`` (ORT's reduce_range grid) is the fast choice on this kind of CPU. Both Add inputs and the global-pool input are
  quantized too (``extra_quantizers``) so ORT fuses QLinearConv/QLinearAdd/QLinearGlobalAveragePool.
* ``ort-arm``: int8 activations. ORT's ARM64 kernels use the signed dot-product
  instructions (SDOT/SMMLA) natively and ORT recommends S8S8 for QDQ models there.
  Non-negative tensors use zero-point -128 (the same 256-level grid as ``ort-x86``, so both
  ORT artifacts compute identical values), signed ones zero-point 0.
* ``trt``: int8, zero-point 0, symmetric everywhere (TensorRT's explicit quantization only
  supports symmetric int8); every export is linted against TensorRT's placement rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecnn.errors import UserError


@dataclass(frozen=True)
class QuantTarget:
    name: str
    activation_dtype: str  # "uint8" | "int8"
    one_sided_nonnegative: bool  # non-negative tensors use all 256 levels (zero-point = qmin)
    weight_dtype: str = "int8"  # "uint8": the same grid stored with zero-point 128 (U8U8)
    # With weight_dtype "uint8": weights whose largest |q| is at most this stay s8 (U8S8).
    signed_weights_max: int = 0
    runtime_arch: tuple[str, ...] = ()  # machines where ORT's own int8 kernels are the deployment
    lint: tuple[str, ...] = ()  # lint rule sets run on every export ("trt")
    # Roles of the optional quantizers (edgecnn.passes.quant.placement) this target enables:
    # "add_weighted_input" (both Add inputs quantized: QLinearAdd, and the conv feeding
    # the Add fuses into QLinearConv), "pool_input" (QLinearGlobalAveragePool).
    extra_quantizers: frozenset = frozenset()
    # Store a dequantized Gemm's bias as int32 so ONNX Runtime fuses the classifier to QGemm.
    int32_gemm_bias: bool = False
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

TARGETS: dict[str, QuantTarget] = {
    "ort-x86": QuantTarget(
        "ort-x86", "uint8", True, weight_dtype="uint8", signed_weights_max=64,
        runtime_arch=("x86_64", "amd64"), extra_quantizers=_ORT_FUSION_QUANTIZERS, int32_gemm_bias=True,
        description="ONNX Runtime x86: u8 activations, u8 per-channel weights (zero-point 128, no VPMADDUBSW saturation)",
    ),
    "ort-arm": QuantTarget(
        "ort-arm", "int8", True, runtime_arch=("aarch64", "arm64"), extra_quantizers=_ORT_FUSION_QUANTIZERS,
        int32_gemm_bias=True,
        description="ONNX Runtime ARM64: s8 activations (S8S8), s8 per-channel weights"
    ),
    "trt": QuantTarget(
        "trt", "int8", False, lint=("trt",), description="TensorRT explicit quantization: symmetric s8, zero-point 0"
    ),
}


def get_target(name: str) -> QuantTarget:
    if isinstance(name, QuantTarget):
        return name
    if name not in TARGETS:
        raise UserError(f"unknown quantization target '{name}'; valid targets: {', '.join(TARGETS)}")
    return TARGETS[name]
