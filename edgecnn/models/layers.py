"""Building blocks shared by the zoo families (torchvision-compatible layouts)."""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10 %.

    The rule of the MobileNet v2/v3 reference code, so that width multipliers give the same
    channel counts as the published checkpoints.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial dimension.

    TF puts the odd pixel after: a 3x3 stride-2 conv on an even size pads 0 before, 1 after.
    """
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class SamePadConv2d(nn.Conv2d):
    """A Conv2d with TensorFlow 'SAME' padding, for weights trained in TensorFlow.

    Same parameters and state-dict keys as ``nn.Conv2d``; the padding is an explicit
    ``F.pad`` before a padding-0 convolution, so ONNX gets a plain Pad + Conv. The pad
    amounts are computed from the input size as Python ints: when traced for export they
    become constants of the exported (fixed-size) graph.
    """

    def __init__(self, *args, **kwargs):
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "SamePadConv2d":
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self))


def pad_same(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Zero-pad ``x`` the way TensorFlow's SAME padding does for ``conv`` (a padding=0 conv).

    Shared by SamePadConv2d and the quantized conv that replaces it, so both export the
    padding the same way: one Pad with constant amounts.
    """
    with warnings.catch_warnings():
        # Tracing turns these sizes into constants, which is what we want for export.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        height, width = int(x.shape[-2]), int(x.shape[-1])
    top, bottom = same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
    left, right = same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
    if top or bottom or left or right:
        if torch.onnx.is_in_onnx_export():
            return _ConstantPad.apply(x, (left, right, top, bottom))
        return F.pad(x, (left, right, top, bottom))
    return x


class _ConstantPad(torch.autograd.Function):
    """Zero padding that the TorchScript ONNX exporter writes as one Pad with constant pads.

    Its generic F.pad translation reverses the pad list with a step -1 Slice that constant
    folding cannot remove, leaving five extra nodes per pad in the graph.
    """

    @staticmethod
    def forward(ctx, x, pads):
        return F.pad(x, pads)

    @staticmethod
    def symbolic(g, x, pads):
        left, right, top, bottom = pads
        onnx_pads = torch.tensor([0, 0, top, left, 0, 0, bottom, right], dtype=torch.int64)
        return g.op("Pad", x, g.op("Constant", value_t=onnx_pads), mode_s="constant")


def use_tf_padding(model: nn.Module) -> nn.Module:
    """Switch every strided conv of ``model`` to TensorFlow SAME padding (keys unchanged).

    Stride-1 convs with odd kernels already match SAME with symmetric padding, so only
    strided convs change.
    """
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and max(child.stride) > 1:
                setattr(parent, child_name, SamePadConv2d.from_conv(child))
    return model


class ConvNormAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, keys ``0``, ``1`` (torchvision's Conv2dNormActivation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        activation_layer: Optional[Callable[..., nn.Module]] = nn.ReLU,
        dilation: int = 1,
    ):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            norm_layer(out_channels),
        ]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across groups (ShuffleNet): reshape to (g, c/g), transpose, flatten."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


def init_weights(model: nn.Module) -> None:
    """The usual initialisation: Kaiming (fan-out) convs, unit BN, small-normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
