"""ShuffleNet V2 (Ma et al. 2018), torchvision's module layout.

A torchvision checkpoint loads with ``strict=True`` and gives the same logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecnn.models.layers import channel_shuffle
from edgecnn.models.registry import PublishedWeights, register_model

STAGE_REPEATS = [4, 8, 4]


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)


class InvertedResidual(nn.Module):
    """Channel split, one branch transformed, concat, channel shuffle; stride 2 transforms both."""

    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        if stride not in (1, 2, 3):
            raise ValueError("stride must be 1, 2 or 3")
        self.stride = stride
        branch_features = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            _depthwise(branch_features, stride),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_out_channels: list[int], num_classes: int = 1000, stages_repeats=STAGE_REPEATS):
        super().__init__()
        in_channels = stages_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, in_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, out_channels in zip(("stage2", "stage3", "stage4"), stages_repeats, stages_out_channels[1:]):
            blocks = [InvertedResidual(in_channels, out_channels, 2)]
            blocks += [InvertedResidual(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*blocks))
            in_channels = out_channels
        out_channels = stages_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x)
        x = x.mean([2, 3])
        return self.fc(x)


_URL = "https://download.pytorch.org/models/"


@register_model(
    "shufflenet_v2_x0_5",
    family="shufflenet_v2",
    imagenet=PublishedWeights(_URL + "shufflenetv2_x0.5-f707e7126e.pth", "f707e7126e", top1=60.552),
)
def shufflenet_v2_x0_5(*, num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNet V2 0.5x."""
    return ShuffleNetV2([24, 48, 96, 192, 1024], num_classes=num_classes)


@register_model(
    "shufflenet_v2_x1_0",
    family="shufflenet_v2",
    imagenet=PublishedWeights(_URL + "shufflenetv2_x1-5666bf0f80.pth", "5666bf0f80", top1=69.362),
)
def shufflenet_v2_x1_0(*, num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNet V2 1.0x."""
    return ShuffleNetV2([24, 116, 232, 464, 1024], num_classes=num_classes)


@register_model(
    "shufflenet_v2_x1_5",
    family="shufflenet_v2",
    imagenet=PublishedWeights(_URL + "shufflenetv2_x1_5-3c479a10.pth", "3c479a10", top1=72.996, resize=232),
)
def shufflenet_v2_x1_5(*, num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNet V2 1.5x."""
    return ShuffleNetV2([24, 176, 352, 704, 1024], num_classes=num_classes)


@register_model(
    "shufflenet_v2_x2_0",
    family="shufflenet_v2",
    imagenet=PublishedWeights(_URL + "shufflenetv2_x2_0-8be3c8ee.pth", "8be3c8ee", top1=76.230, resize=232),
)
def shufflenet_v2_x2_0(*, num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNet V2 2.0x."""
    return ShuffleNetV2([24, 244, 488, 976, 2048], num_classes=num_classes)
