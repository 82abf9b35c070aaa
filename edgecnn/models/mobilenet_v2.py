"""MobileNet V2 (Sandler et al. 2018): inverted residuals with linear bottlenecks.

Module names, state-dict keys and forward are torchvision's, so a torchvision checkpoint
loads with ``strict=True`` and gives the same logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from edgecnn.models.layers import ConvNormAct, init_weights, make_divisible, use_tf_padding
from edgecnn.models.registry import PublishedWeights, register_model

# expansion t, output channels c, repeats n, first stride s (Table 2 of the paper).
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
WIDTH_RANGE = (0.35, 1.4)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(inp, hidden_dim, kernel_size=1, activation_layer=nn.ReLU6))
        layers.extend(
            [
                ConvNormAct(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, activation_layer=nn.ReLU6),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8, dropout: float = 0.2):
        super().__init__()
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvNormAct(3, input_channel, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(ConvNormAct(input_channel, self.last_channel, kernel_size=1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register_model(
    "mobilenet_v2",
    family="mobilenet_v2",
    imagenet=PublishedWeights("https://download.pytorch.org/models/mobilenet_v2-b0353104.pth", "b0353104", top1=71.878),
)
def mobilenet_v2(
    *, num_classes: int = 1000, width_mult: float = 1.0, tf_padding: bool = False, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNet V2, width 0.35-1.4; ``tf_padding`` for TensorFlow-trained weights."""
    low, high = WIDTH_RANGE
    if not isinstance(width_mult, (int, float)) or not low <= float(width_mult) <= high:
        raise UserError(
            f"width_mult {width_mult!r} is not valid for mobilenet_v2; valid: {low} to {high} "
            "(the paper's 0.35, 0.5, 0.75, 1.0, 1.3, 1.4)"
        )
    model = MobileNetV2(num_classes=num_classes, width_mult=float(width_mult), dropout=dropout)
    return use_tf_padding(model) if tf_padding else model
