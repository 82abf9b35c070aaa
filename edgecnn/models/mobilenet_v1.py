"""MobileNet V1 (Howard et al. 2017): depthwise-separable convs, width multiplier.

torchvision has no MobileNet V1; the layout follows edgecnn's reference checkpoint
(keys ``features.0.{0,1}``, ``features.i.{0,1,3,4}``, ``classifier.1``), the TF-slim
network with its BatchNorms kept as modules.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from edgecnn.models.layers import init_weights, use_tf_padding
from edgecnn.models.registry import register_model

# (output channels, stride) of the 13 depthwise-separable blocks at width 1.0.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
WIDTH_RANGE = (0.25, 1.0)


def scaled_channels(channels: int, width_mult: float) -> int:
    """TF-slim's depth rule: ``max(int(c * width_mult), 8)``."""
    return max(int(channels * width_mult), 8)


class MobileNetV1(nn.Module):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        in_channels = scaled_channels(32, width_mult)
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(3, in_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(in_channels),
                nn.ReLU6(inplace=True),
            )
        ]
        for out, stride in BLOCKS:
            out_channels = scaled_channels(out, width_mult)
            layers.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
                    nn.BatchNorm2d(in_channels),
                    nn.ReLU6(inplace=True),
                    nn.Conv2d(in_channels, out_channels, 1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU6(inplace=True),
                )
            )
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.last_channel = in_channels
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(in_channels, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register_model("mobilenet_v1", family="mobilenet_v1", preprocess="tf")
def mobilenet_v1(
    *, num_classes: int = 1000, width_mult: float = 1.0, tf_padding: bool = False, dropout: float = 0.2
) -> MobileNetV1:
    """MobileNet V1, width 0.25-1.0; ``tf_padding`` for TensorFlow-trained weights."""
    low, high = WIDTH_RANGE
    if not isinstance(width_mult, (int, float)) or not low <= float(width_mult) <= high:
        raise UserError(
            f"width_mult {width_mult!r} is not valid for mobilenet_v1; valid: {low} to {high} "
            "(the paper's 0.25, 0.5, 0.75, 1.0)"
        )
    model = MobileNetV1(float(width_mult), num_classes=num_classes, dropout=dropout)
    return use_tf_padding(model) if tf_padding else model
