"""MobileNet V3 Large and Small (Howard et al. 2019), torchvision's module layout.

A torchvision checkpoint loads with ``strict=True`` and gives the same logits.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn as nn

from edgecnn.models.layers import ConvNormAct, init_weights, make_divisible
from edgecnn.models.registry import PublishedWeights, register_model

# BatchNorm settings of the reference implementation (TF defaults).
_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class BlockConfig(NamedTuple):
    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (hard swish)
    stride: int


# Tables 1 and 2 of the paper.
LARGE = [
    BlockConfig(16, 3, 16, 16, False, "RE", 1),
    BlockConfig(16, 3, 64, 24, False, "RE", 2),
    BlockConfig(24, 3, 72, 24, False, "RE", 1),
    BlockConfig(24, 5, 72, 40, True, "RE", 2),
    BlockConfig(40, 5, 120, 40, True, "RE", 1),
    BlockConfig(40, 5, 120, 40, True, "RE", 1),
    BlockConfig(40, 3, 240, 80, False, "HS", 2),
    BlockConfig(80, 3, 200, 80, False, "HS", 1),
    BlockConfig(80, 3, 184, 80, False, "HS", 1),
    BlockConfig(80, 3, 184, 80, False, "HS", 1),
    BlockConfig(80, 3, 480, 112, True, "HS", 1),
    BlockConfig(112, 3, 672, 112, True, "HS", 1),
    BlockConfig(112, 5, 672, 160, True, "HS", 2),
    BlockConfig(160, 5, 960, 160, True, "HS", 1),
    BlockConfig(160, 5, 960, 160, True, "HS", 1),
]
SMALL = [
    BlockConfig(16, 3, 16, 16, True, "RE", 2),
    BlockConfig(16, 3, 72, 24, False, "RE", 2),
    BlockConfig(24, 3, 88, 24, False, "RE", 1),
    BlockConfig(24, 5, 96, 40, True, "HS", 2),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 240, 40, True, "HS", 1),
    BlockConfig(40, 5, 120, 48, True, "HS", 1),
    BlockConfig(48, 5, 144, 48, True, "HS", 1),
    BlockConfig(48, 5, 288, 96, True, "HS", 2),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
    BlockConfig(96, 5, 576, 96, True, "HS", 1),
]


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool -> 1x1 reduce -> ReLU -> 1x1 expand -> hard sigmoid -> scale."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.use_res_connect = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        act = nn.Hardswish if cfg.activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(ConvNormAct(cfg.in_channels, cfg.expanded, kernel_size=1, norm_layer=_norm, activation_layer=act))
        layers.append(
            ConvNormAct(
                cfg.expanded, cfg.expanded, kernel_size=cfg.kernel, stride=cfg.stride, groups=cfg.expanded,
                norm_layer=_norm, activation_layer=act,
            )
        )
        if cfg.use_se:
            layers.append(SqueezeExcitation(cfg.expanded, make_divisible(cfg.expanded // 4, 8)))
        layers.append(ConvNormAct(cfg.expanded, cfg.out_channels, kernel_size=1, norm_layer=_norm, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = result + x
        return result


class MobileNetV3(nn.Module):
    def __init__(self, setting: list[BlockConfig], last_channel: int, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [
            ConvNormAct(3, setting[0].in_channels, kernel_size=3, stride=2, norm_layer=_norm, activation_layer=nn.Hardswish)
        ]
        layers.extend(InvertedResidual(cfg) for cfg in setting)
        last_in = setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(ConvNormAct(last_in, last_out, kernel_size=1, norm_layer=_norm, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register_model(
    "mobilenet_v3_large",
    family="mobilenet_v3",
    imagenet=PublishedWeights("https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth", "8738ca79", top1=74.042),
)
def mobilenet_v3_large(*, num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV3:
    """MobileNet V3 Large: NAS-found blocks with squeeze-excitation and hard swish."""
    return MobileNetV3(LARGE, 1280, num_classes=num_classes, dropout=dropout)


@register_model(
    "mobilenet_v3_small",
    family="mobilenet_v3",
    imagenet=PublishedWeights("https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth", "047dcff4", top1=67.668),
)
def mobilenet_v3_small(*, num_classes: int = 1000, dropout: float = 0.2) -> MobileNetV3:
    """MobileNet V3 Small: the low-resource variant."""
    return MobileNetV3(SMALL, 1024, num_classes=num_classes, dropout=dropout)
