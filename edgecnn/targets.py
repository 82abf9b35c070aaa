"""Deployment targets, as data: everything edgecnn does differently per target is a field here.

A target says how calibrated activation ranges become integers (integer type, one-sided or
symmetric for non-negative tensors), how weights are stored, which runtime runs the
artifact, whether an engine file is built, which lint runs on every export, which exact form
a shift layer is exported in, and how accuracy and latency can be measured on a CPU. Adding a
target is adding an entry to :data:`TARGETS` (plus its encoder, if its encoding is new), not
an ``if`` elsewhere: ``ship``, ``search``, the CLI's choices and the tests read this table.
This module is at the bottom of edgecnn: it imports nothing but errors and :mod:`edgecnn.cpu`.

Each CPU target (ONNX Runtime, OpenVINO) declares the CPU classes (:mod:`edgecnn.cpu`) whose kernels run it as
deployed (``cpu_classes``). On any other host its accuracy is measured in the reference Q/DQ
semantics and its latency is not shown, as for ``trt``: that host's int8 kernels are not the
ones the artifact was encoded for.

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
  QLinearConv/QLinearAdd/QLinearGlobalAveragePool. It is for the classes ``x86-avx2`` and
  ``x86-vnni``: the AVX2-safe encoding is exact on both.
* ``ort-x86-vnni``: the ``ort-x86`` encoding with every weight stored s8 (U8S8, no U8U8
  fallback), for the class ``x86-vnni`` only. With AVX-512 VNNI or AVX-VNNI, MLAS computes
  u8 x s8 products with VPDPBUSD, which accumulates four products straight into int32: there is
  no int16 intermediate to saturate, so full 8-bit s8 weights are exact there, and they run on
  the U8S8 kernels that U8U8 weights miss. On an AVX2-only CPU the same file takes the
  VPMADDUBSW path and can saturate, so edgecnn never times it there and measures its accuracy in
  the reference semantics (what a VNNI CPU computes). Asking for ``x86`` picks this target on a
  VNNI host and ``ort-x86`` elsewhere (:func:`resolve_target_name`). Both claims (exact on
  VNNI kernels, saturating on AVX2 ones: ``saturates_on``) are checked on the kernels of
  whichever host runs tests/test_cpu_kernels.py.
* ``ort-arm``: int8 activations. ORT's ARM64 kernels use the signed dot-product instructions
  (SDOT/SMMLA) natively and ORT recommends S8S8 for QDQ models there. Non-negative tensors use
  zero-point -128 (the same 256-level grid as ``ort-x86``, so both ORT artifacts compute
  identical values), signed ones zero-point 0.
* ``ov-x86`` / ``ov-x86-vnni``: the same two encodings read by OpenVINO's CPU plugin (backend
  ``openvino``). Its int8 convolutions take u8 activations and s8 weights, and on AVX2 without
  VNNI they saturate like ORT's (a 1x1 conv of 64 channels, u8 255 times s8 127: about half the
  exact sum), while weights stored u8 with zero-point 128 are computed exactly (slower: they miss
  the s8 kernels, so ``bits=7`` is the fast choice there too). On VNNI CPUs the full 8-bit s8
  file runs OpenVINO's fastest int8 kernels (``bench/results/`` peers: edgecnn's VNNI file read by
  OpenVINO). ``--target openvino`` picks the VNNI one on a VNNI host. The claims are checked on
  this host's OpenVINO kernels in tests/test_cpu_kernels.py like ORT's.
* ``trt``: int8, zero-point 0, symmetric everywhere (TensorRT's explicit quantization only
  supports symmetric int8); every export is linted against TensorRT's placement rules. On a
  CPU its accuracy is measured in the reference Q/DQ semantics (ONNX Runtime with graph
  optimizations off: DequantizeLinear -> float op -> QuantizeLinear, what TensorRT computes),
  because ORT's fused x86 int8 kernels saturate with signed-int8 activations on CPUs without
  VNNI; and its CPU latency says nothing about the engine on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Union, get_args

from edgecnn.errors import UserError

# The runtime that runs an artifact on its device: one vocabulary for the table, the CLI's
# --backend and the measuring side. "tensorrt" is read as "trt" (older recipes spelled it so).
Backend = Literal["ort", "openvino", "trt"]
BACKENDS: tuple[str, ...] = get_args(Backend)
# The runtimes that run an artifact on a CPU's own int8 kernels: their targets declare the CPU
# classes those kernels serve, and are measured (accuracy, latency) on this host's kernels there.
CPU_BACKENDS: tuple[str, ...] = ("ort", "openvino")
_BACKEND_SPELLINGS = {"tensorrt": "trt"}
CpuAccuracy = Literal["optimized", "reference"]


@dataclass(frozen=True)
class QuantTarget:
    name: str
    activation_dtype: str  # "uint8" | "int8"
    one_sided_nonnegative: bool  # non-negative tensors use all 256 levels (zero-point = qmin)
    weight_dtype: str = "int8"  # "uint8": the same grid stored with zero-point 128 (U8U8)
    # With weight_dtype "uint8": weights whose largest |q| is at most this stay s8 (U8S8).
    signed_weights_max: int = 0
    # CPU classes (edgecnn.cpu.CPU_CLASSES) whose kernels (of the target's runtime: ONNX Runtime's
    # or OpenVINO's) run the artifact as deployed; empty for a target that never runs on a CPU's
    # int8 kernels (trt).
    cpu_classes: tuple[str, ...] = ()
    # CPU classes whose int8 kernels compute this artifact wrongly (int16 saturation): nothing
    # measured there with ORT's kernels is shown, and a bundle is not checked there.
    saturates_on: tuple[str, ...] = ()
    # The instruction-set family a user may name instead of the target ("--target x86").
    family: str = ""
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
    # How `measure` evaluates accuracy on a CPU: "optimized" = the target's runtime with its
    # graph optimizations (its int8 kernels, as deployed); "reference" = ONNX Runtime with
    # optimizations off, i.e. DequantizeLinear -> float op -> QuantizeLinear, the semantics the
    # device computes.
    cpu_accuracy: CpuAccuracy = "optimized"
    cpu_latency_meaningful: bool = True  # does ORT CPU latency predict the deployed latency?
    description: str = ""
    runtime_title: str = ""  # what a ship bundle's README says it is for
    # Does `ship` write an app bundle for it? Bundles carry an ONNX Runtime app and check or a
    # TensorRT build script; OpenVINO's are not written yet (ship_refusal says what to do instead).
    bundle: bool = True
    # ORT-format converter --target_platform (ship's model.ort); None: the converter's portable default.
    ort_format_platform: Optional[str] = None

    def ship_refusal(self) -> Optional[str]:
        """One line on why ``ship`` writes no bundle for this target and what to ship instead, or None."""
        if self.bundle:
            return None
        return (f"ship writes no app bundle for {self.name} yet (bundles carry an ONNX Runtime app or a TensorRT "
                f"build); ship its .onnx, or OpenVINO's own files from 'edgecnn compile MODEL.onnx --backend {self.backend}'")

    def runs_on(self, cpu_class: str) -> bool:
        """Do the int8 kernels of a CPU of class ``cpu_class`` run this artifact as deployed?"""
        return cpu_class in self.cpu_classes

    def unfit_reason(self, cpu_class: str) -> Optional[str]:
        """One line on why a CPU of ``cpu_class`` does not run this artifact as deployed, or None."""
        if self.backend not in CPU_BACKENDS or self.runs_on(cpu_class):
            return None
        why = ("its int8 kernels saturate on this artifact's full 8-bit s8 weights"
               if cpu_class in self.saturates_on else "its int8 kernels are not the ones the artifact is for")
        return f"{self.name} is for CPU classes {', '.join(self.cpu_classes)}; this CPU is {cpu_class}: {why}"

    def accuracy_semantics_on(self, cpu_class: str) -> CpuAccuracy:
        """How accuracy is measured on a CPU of ``cpu_class``: its kernels, or the reference semantics."""
        if self.cpu_accuracy == "reference" or not self.runs_on(cpu_class):
            return "reference"
        return "optimized"

    def latency_meaningful_on(self, cpu_class: str) -> bool:
        """Does a latency measured on a CPU of ``cpu_class`` say anything about the deployment?"""
        return self.cpu_latency_meaningful and self.runs_on(cpu_class)

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
        cpu_classes=("x86-avx2", "x86-vnni"), family="x86", extra_quantizers=_ORT_FUSION_QUANTIZERS,
        int32_gemm_bias=True, shift_deploy_basis=_SHIFT_MEASURED,
        description="ONNX Runtime x86: u8 activations, u8 per-channel weights (zero-point 128, no VPMADDUBSW saturation)",
        runtime_title="ONNX Runtime on x86-64 CPUs",
    ),
    "ort-x86-vnni": QuantTarget(
        "ort-x86-vnni", "uint8", True, cpu_classes=("x86-vnni",), saturates_on=("x86-avx2",), family="x86",
        extra_quantizers=_ORT_FUSION_QUANTIZERS, int32_gemm_bias=True, shift_deploy_basis=_SHIFT_MEASURED,
        description="ONNX Runtime x86 with VNNI: u8 activations, s8 per-channel weights (U8S8, int32 accumulation)",
        runtime_title="ONNX Runtime on x86-64 CPUs with AVX-512 VNNI or AVX-VNNI",
    ),
    "ort-arm": QuantTarget(
        "ort-arm", "int8", True, cpu_classes=("arm64-neon", "arm64-dot", "arm64-i8mm"), family="arm",
        extra_quantizers=_ORT_FUSION_QUANTIZERS, int32_gemm_bias=True,
        shift_deploy_basis="not measured: same MLAS depthwise kernel as x86",
        description="ONNX Runtime ARM64: s8 activations (S8S8), s8 per-channel full 8-bit weights (measured on the "
                    "aarch64 kernels at NEON, dot-product and I8MM levels: no saturation, S8S8 = U8S8; "
                    "docs/arm.md, bench/results/arm_kernels.md)",
        runtime_title="ONNX Runtime on ARM64 CPUs (phones, Jetson CPU)", ort_format_platform="arm",
    ),
    "ov-x86": QuantTarget(
        "ov-x86", "uint8", True, weight_dtype="uint8", signed_weights_max=64,
        cpu_classes=("x86-avx2", "x86-vnni"), family="openvino", extra_quantizers=_ORT_FUSION_QUANTIZERS,
        int32_gemm_bias=True, backend="openvino", shift_deploy_basis="not measured in OpenVINO",
        description="OpenVINO CPU on x86: the ort-x86 encoding (u8 activations, weights above |64| stored u8 with "
                    "zero-point 128), which OpenVINO's AVX2 kernels compute exactly",
        runtime_title="OpenVINO on x86-64 CPUs", bundle=False,
    ),
    "ov-x86-vnni": QuantTarget(
        "ov-x86-vnni", "uint8", True, cpu_classes=("x86-vnni",), saturates_on=("x86-avx2",), family="openvino",
        extra_quantizers=_ORT_FUSION_QUANTIZERS, int32_gemm_bias=True, backend="openvino",
        shift_deploy_basis="not measured in OpenVINO",
        description="OpenVINO CPU on x86 with VNNI: u8 activations, s8 per-channel full 8-bit weights",
        runtime_title="OpenVINO on x86-64 CPUs with AVX-512 VNNI or AVX-VNNI", bundle=False,
    ),
    "trt": QuantTarget(
        "trt", "int8", False, backend="trt", engine="tensorrt", trt_lint=True,
        shift_deploy_basis="not measured: TensorRT fuses depthwise conv; Slice+Concat are copies",
        cpu_accuracy="reference", cpu_latency_meaningful=False,
        description="TensorRT explicit quantization: symmetric s8, zero-point 0",
        runtime_title="TensorRT (NVIDIA GPUs, Jetson)",
    ),
}

DEFAULT_TARGET = "ort-x86"  # recipes and exports that name no target
# The encoding of an activation quantizer before any target is chosen: symmetric s8, zero-point 0.
UNTARGETED_ENCODING = "trt"


def cpu_runtime(target: Optional[QuantTarget]) -> str:
    """The runtime that runs ``target``'s artifacts on a CPU's own kernels: its backend for a CPU
    target, ONNX Runtime for none (FP32) or for a target whose runtime is not a CPU's (trt)."""
    return target.backend if target is not None and target.backend in CPU_BACKENDS else "ort"


def target_names() -> tuple[str, ...]:
    return tuple(TARGETS)


def backend_name(name: str) -> str:
    """``name`` in the one backend vocabulary (:data:`BACKENDS`); "tensorrt" reads as "trt"."""
    return _BACKEND_SPELLINGS.get(name, name)


def targets_on_backend(backend: str) -> tuple[str, ...]:
    """The targets whose artifacts run on ``backend`` ("ort": the ONNX Runtime targets)."""
    backend = backend_name(backend)
    return tuple(name for name, t in TARGETS.items() if t.backend == backend)


def families() -> tuple[str, ...]:
    """The family names a user may give instead of a target ("x86", "arm")."""
    return tuple(dict.fromkeys(t.family for t in TARGETS.values() if t.family))


def resolve_target_name(name: str, cpu_class: Optional[str] = None) -> str:
    """A target name, or a family ("x86") resolved for the CPU class ``cpu_class`` (default: the host's).

    Of the family's targets, the most specific one whose kernels this class runs (fewest
    ``cpu_classes``: ``ort-x86-vnni`` on a VNNI host); on a host of no class of the family, the
    most portable one (``ort-x86`` when asked for x86 on an ARM machine).
    """
    if name in TARGETS:
        return name
    members = [t for t in TARGETS.values() if t.family and t.family == name]
    if not members:
        return name  # validated (with the list of valid names) where it is used
    if cpu_class is None:
        from edgecnn import cpu

        cpu_class = cpu.host_class()
    fitting = [t for t in members if t.runs_on(cpu_class)]
    if fitting:
        return min(fitting, key=lambda t: len(t.cpu_classes)).name
    return max(members, key=lambda t: len(t.cpu_classes)).name


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
    forms = {TARGETS[t].shift_deploy for t in targets_on_backend(name)}
    if len(forms) != 1:
        backends = sorted({t.backend for t in TARGETS.values()})
        raise UserError(f"no shift deploy form known for '{name}'; valid: {', '.join([*TARGETS, *backends])}")
    return forms.pop()
