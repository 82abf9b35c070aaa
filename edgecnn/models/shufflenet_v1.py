"""ShuffleNet V1 (Zhang et al. 2017): pointwise group convs + channel shuffle.

torchvision has no ShuffleNet V1; this follows the paper (Table 1): a 3x3 stem, max pool,
three stages of 4/8/4 units, global pool and a linear classifier. A unit is 1x1 group conv
(bottleneck = output/4) -> channel shuffle -> 3x3 depthwise -> 1x1 group conv, added to the
input (stride 1) or concatenated with a 3x3 average pool of it (stride 2). The first 1x1 of
stage 2 is not grouped: its 24 input channels are too few to split.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from edgecnn.models.layers import channel_shuffle, init_weights, make_divisible
from edgecnn.models.registry import register_model

# Output channels of stages 2, 3, 4 at width 1.0, per group count (Table 1 of the paper).
STAGE_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)
WIDTH_RANGE = (0.5, 2.0)


class ShuffleUnit(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, groups: int, first_grouped: bool = True):
        super().__init__()
        self.stride = stride
        self.groups = groups
        mid = oup // 4
        # With stride 2 the pooled input is concatenated, so the branch makes the rest.
        branch_out = oup - inp if stride == 2 else oup
        self.conv1 = nn.Conv2d(inp, mid, 1, bias=False, groups=groups if first_grouped else 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle_groups = groups if first_grouped else 1
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, bias=False, groups=groups)
        self.bn3 = nn.BatchNorm2d(branch_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), out], 1))
        return F.relu(x + out)


# Stem widths of the authors' released models (the stem is not simply 24 * width: the 1.5x
# model keeps 24). Other widths scale 24 linearly.
STEM_CHANNELS = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}


def stage_channels(groups: int, width_mult: float) -> tuple[int, int, int, int]:
    """(stem, stage2, stage3, stage4) channels, rounded so every group conv splits evenly.

    Stage widths are rounded to multiples of 4 * groups (the bottleneck is a quarter of the
    output and must split into ``groups``); the stem to a multiple of ``groups`` (the first
    unit's grouped 1x1 makes ``stage2 - stem`` channels).
    """
    stem = make_divisible(STEM_CHANNELS.get(width_mult, 24 * width_mult), groups if groups > 1 else 4)
    stages = tuple(make_divisible(c * width_mult, 4 * groups) for c in STAGE_CHANNELS[groups])
    return (stem, *stages)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        stem, *stages = stage_channels(groups, width_mult)
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem
        for index, (name, repeats, out_channels) in enumerate(zip(("stage2", "stage3", "stage4"), STAGE_REPEATS, stages)):
            units = [ShuffleUnit(in_channels, out_channels, 2, groups, first_grouped=index > 0)]
            units += [ShuffleUnit(out_channels, out_channels, 1, groups) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            in_channels = out_channels
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = x.mean([2, 3])
        return self.fc(x)


@register_model("shufflenet_v1", family="shufflenet_v1")
def shufflenet_v1(*, num_classes: int = 1000, groups: int = 3, width_mult: float = 1.0) -> ShuffleNetV1:
    """ShuffleNet V1, groups 1/2/3/4/8, width 0.5-2.0."""
    if groups not in STAGE_CHANNELS:
        raise UserError(f"groups {groups!r} is not valid for shufflenet_v1; valid: {', '.join(map(str, STAGE_CHANNELS))}")
    low, high = WIDTH_RANGE
    if not isinstance(width_mult, (int, float)) or not low <= float(width_mult) <= high:
        raise UserError(
            f"width_mult {width_mult!r} is not valid for shufflenet_v1; valid: {low} to {high} "
            "(the paper's 0.25 is not supported; 0.5, 1.0, 1.5, 2.0)"
        )
    return ShuffleNetV1(groups=groups, width_mult=float(width_mult), num_classes=num_classes)
