"""Fake-quantization modules: TensorQuantizer, QuantConv2d, QuantLinear.

Quantizers call ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` so the
TorchScript ONNX exporter writes QuantizeLinear/DequantizeLinear itself, and their backward
is the straight-through estimator (gradient passed inside the range, zero outside), which
is what QAT needs.

Weights: per-channel symmetric, zero-point 0, on a ``2**(bits-1) - 1`` grid (8 bit:
-127..127, 6 bit: -31..31, 4 bit: -7..7 times a per-channel scale), stored as int8.
Activations: per-tensor 8 bit; the integer encoding (u8 / s8, zero-point) comes from the
deployment target (:mod:`edgecnn.targets`), the range from calibration.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.targets import UNTARGETED_ENCODING, QuantTarget, get_target


def weight_qmax(bits: int) -> int:
    """Largest integer of a symmetric ``bits``-bit weight grid (127, 31, 7)."""
    return 2 ** (bits - 1) - 1


class TensorQuantizer(nn.Module):
    """Fake-quantizes one tensor: per-channel weights (``axis`` set) or per-tensor activations.

    States: *calibrating* (collect statistics, pass the input through), *enabled* (quantize),
    disabled (identity). ``amax`` is the calibrated range; for activations ``nonnegative``
    records whether calibration ever saw a negative value, which lets targets with a
    one-sided encoding use all 256 levels.
    """

    def __init__(self, num_bits: int = 8, axis: Optional[int] = None, role: Optional[str] = None):
        super().__init__()
        self.num_bits = num_bits
        self.axis = axis
        # None: every target quantizes here; else only targets listing the role in
        # QuantTarget.extra_quantizers (calibrated always, so one calibration serves all).
        self.role = role
        self.enabled = True
        self.calibrating = False
        self.collector = None  # set by edgecnn.passes.quant.calibrate while calibrating
        self.target: QuantTarget = get_target(UNTARGETED_ENCODING)
        self.register_buffer("amax", torch.tensor(float("nan")))
        self.register_buffer("nonnegative", torch.tensor(False))
        # Range for a one-sided 255-level encoding of a non-negative tensor (MSE/entropy
        # ranges depend on the number of levels, so it is calibrated separately).
        self.register_buffer("amax_one_sided", torch.tensor(float("nan")))

    # -- configuration -------------------------------------------------------------------
    @property
    def is_weight(self) -> bool:
        return self.axis is not None

    @property
    def active_for_target(self) -> bool:
        return self.role is None or self.role in self.target.extra_quantizers

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.amax).all()) and self.amax.numel() > 0

    def set_amax(self, amax, nonnegative: bool = False, one_sided=None) -> None:
        amax = torch.as_tensor(amax, dtype=torch.float32).detach().clone()
        # A zero range (dead channel / all-zero tensor) would give scale 0: use a tiny one.
        self.amax = torch.clamp(amax, min=1e-8)
        self.nonnegative = torch.tensor(bool(nonnegative))
        if one_sided is not None:
            self.amax_one_sided = torch.clamp(torch.as_tensor(one_sided, dtype=torch.float32), min=1e-8)
        else:
            self.amax_one_sided = self.amax.clone() if self.amax.dim() == 0 else torch.tensor(float("nan"))

    def extra_repr(self) -> str:
        where = f"per-channel axis={self.axis}" if self.is_weight else f"per-tensor target={self.target.name}"
        if self.role:
            where += f", role={self.role}"
        state = "calibrating" if self.calibrating else ("on" if self.enabled else "off")
        return f"bits={self.num_bits}, {where}, {state}"

    # -- the integer encoding --------------------------------------------------------------
    def encoding(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(scale, zero_point, qmin, qmax) of the current target; weight zero-points are 0."""
        if self.is_weight:
            scale = (self.amax / weight_qmax(self.num_bits)).float()
            return scale, torch.zeros_like(scale, dtype=torch.int32), -128, 127
        levels, zero_point, qmin, qmax = self.target.activation_encoding(bool(self.nonnegative))
        amax = self.amax_one_sided if levels == 255 and torch.isfinite(self.amax_one_sided) else self.amax
        scale = (amax / levels).float().reshape(())
        return scale, torch.tensor(zero_point, dtype=torch.int32), qmin, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            if self.collector is not None:
                self.collector.collect(x.detach())
            return x
        if not self.enabled or not self.calibrated or not self.active_for_target:
            return x
        scale, zero_point, qmin, qmax = self.encoding()
        if self.is_weight:
            # Clip to the per-channel range first: a clipped (MSE-chosen) range must land on
            # +-qmax, not on the int8 saturation values the exporter's -128..127 allows.
            if not torch.jit.is_tracing():  # export bakes weights onto the grid first: no clip needed
                shape = [1] * x.dim()
                shape[self.axis] = -1
                bound = self.amax.reshape(shape).to(x.dtype)
                x = torch.maximum(torch.minimum(x, bound), -bound)
            return torch.fake_quantize_per_channel_affine(x, scale, zero_point, self.axis, qmin, qmax)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)

    # -- integers, for tests, reports and export -------------------------------------------
    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The stored integers of ``x`` (before subtracting the zero-point)."""
        scale, zero_point, qmin, qmax = self.encoding()
        if self.is_weight:
            shape = [1] * x.dim()
            shape[self.axis] = -1
            q = torch.round(x / scale.reshape(shape))
            limit = weight_qmax(self.num_bits)
            return q.clamp(-limit, limit).to(torch.int32)
        return (torch.round(x / scale) + zero_point).clamp(qmin, qmax).to(torch.int32)


class _QuantLayerMixin:
    """Shared construction for the quantized conv / linear layers."""

    def _init_quantizers(self, bits: int, act_bits: int = 8) -> None:
        self.weight_quantizer = TensorQuantizer(bits, axis=0)
        self.input_quantizer = TensorQuantizer(act_bits)

    def quantized_weight(self) -> torch.Tensor:
        # Evaluation re-quantizes the same weights every call; cache them while nothing that
        # feeds the result changes (never while tracing for export or computing gradients).
        q = self.weight_quantizer
        if torch.jit.is_tracing() or (torch.is_grad_enabled() and self.weight.requires_grad):
            return q(self.weight)
        key = (self.weight.data_ptr(), self.weight._version, q.amax.data_ptr(), q.amax._version, q.num_bits, q.enabled, q.calibrating)
        cached = getattr(self, "_weight_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, q(self.weight).detach())
            self._weight_cache = cached
        return cached[1]

    @property
    def weight_bits(self) -> Optional[int]:
        q = self.weight_quantizer
        return q.num_bits if q.enabled and q.calibrated else None


class QuantConv2d(_QuantLayerMixin, nn.Conv2d):
    """nn.Conv2d with fake-quantized input and weight; same state-dict keys for weight/bias.

    ``same_padding`` reproduces edgecnn's TensorFlow-SAME conv: the input is quantized
    *before* the explicit Pad so that nothing sits between Pad and Conv (TensorRT fuses them).
    """

    def __init__(self, *args, bits: int = 8, same_padding: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.same_padding = same_padding
        self._init_quantizers(bits)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int = 8) -> "QuantConv2d":
        from edgecnn.models.layers import SamePadConv2d

        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            bits=bits,
            same_padding=isinstance(conv, SamePadConv2d),
        )
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new.to(conv.weight.device)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        from edgecnn.models.layers import pad_same

        return pad_same(x, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x)
        if self.same_padding:
            x = self._pad(x)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_QuantLayerMixin, nn.Linear):
    """nn.Linear with fake-quantized input and weight; same state-dict keys for weight/bias."""

    def __init__(self, *args, bits: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_quantizers(bits)

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int = 8) -> "QuantLinear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, bits=bits)
        new.weight = linear.weight
        if linear.bias is not None:
            new.bias = linear.bias
        return new.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)


def quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]


def quantizers(model: nn.Module) -> list[tuple[str, TensorQuantizer]]:
    """Every TensorQuantizer once (a quantizer shared by several call sites counts once)."""
    seen, out = set(), []
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and id(module) not in seen:
            seen.add(id(module))
            out.append((name, module))
    return out


def replace_layers(model: nn.Module, names: list[str], bits: int) -> None:
    """Swap the named conv/linear modules for their Quant* twins, in place, same names."""
    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        if isinstance(layer, QUANT_LAYERS):
            continue
        quant = QuantConv2d.from_float(layer, bits) if isinstance(layer, nn.Conv2d) else QuantLinear.from_float(layer, bits)
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, quant)


def set_target(model: nn.Module, target) -> QuantTarget:
    """Switch every activation quantizer to ``target``'s integer encoding (same ranges)."""
    target = get_target(target)
    for _, q in quantizers(model):
        q.target = target
    return target


def set_quantizers(model: nn.Module, enabled: Optional[bool] = None, calibrating: Optional[bool] = None) -> None:
    for _, q in quantizers(model):
        if enabled is not None:
            q.enabled = enabled
        if calibrating is not None:
            q.calibrating = calibrating


def bake_weights(model: nn.Module) -> None:
    """Replace each quantized layer's float weight by its fake-quantized value (on the grid).

    After this the weight quantizer is idempotent, so exported int8 weights are exact.
    """
    with torch.no_grad():
        for _, layer in quant_layers(model):
            if layer.weight_quantizer.enabled and layer.weight_quantizer.calibrated:
                layer.weight.copy_(layer.quantized_weight())
