"""Channel pruning: one test per topology (concat, residual, shuffle, then the zoo).

Each pruned model must run, export to ONNX and match onnxruntime, keep channel counts that
are multiples of ``round_to``, and have the MACs the pass reported (counted here by hand).
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.models import create
from edgecnn.passes.channel_prune import Analysis, ShuffleSpan
from edgecnn.passes.prune import get_masks
from edgecnn.passes.registry import PassContext, run_pass

SIZE = 64


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


def cbr(cin, cout, k=1, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ToyConcat(nn.Module):
    """Fire-like: squeeze, two expands concatenated, twice, then a conv classifier."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32, 3, 2)
        self.squeeze1, self.e1, self.e3 = cbr(32, 16), cbr(16, 32), cbr(16, 32, 3)
        self.squeeze2, self.f1, self.f3 = cbr(64, 16), cbr(16, 32), cbr(16, 32, 3)
        self.classifier = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        s = self.squeeze1(x)
        x = torch.cat([self.e1(s), self.e3(s)], 1)
        s = self.squeeze2(x)
        x = torch.cat([self.f1(s), self.f3(s)], 1)
        return self.classifier(x).mean([2, 3])


class ToyResidual(nn.Module):
    """Inverted residuals with depthwise convs and adds, then a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 24, 3, 2)
        self.blocks = nn.ModuleList(
            nn.Sequential(cbr(24, 96), cbr(96, 96, 3, groups=96), nn.Conv2d(96, 24, 1, bias=False), nn.BatchNorm2d(24)) for _ in range(2)
        )
        self.last = cbr(24, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.last(x), 1), 1))


class ToyShuffle(nn.Module):
    """ShuffleNetV2-like units: channel split, one branch transformed, concat, shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32, 3, 2)
        self.branches = nn.ModuleList(
            nn.Sequential(cbr(16, 32), nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), cbr(32, 16)) for _ in range(2)
        )
        self.last = cbr(32, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        for branch in self.branches:
            left, right = x.chunk(2, dim=1)
            x = shuffle(torch.cat([left, branch(right)], 1), 2)
        return self.fc(self.last(x).mean([2, 3]))


TOPOLOGIES = {
    "toy_concat": ToyConcat,
    "toy_residual": ToyResidual,
    "toy_shuffle": ToyShuffle,
    **{name: (lambda name=name: create(name, num_classes=10)) for name in (
        "squeezenet1_1", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "shufflenet_v1", "resnet18"
    )},
}
# ShuffleNetV1 only prunes the channels inside its units (stage 2's are too few to keep a
# multiple of 8 that splits evenly over 3 x 3 groups), so it shrinks less.
MAX_MACS_RATIO = {"shufflenet_v1": 0.8}


def count_macs(model: nn.Module, size: int) -> int:
    """Conv and linear MACs at batch 1, counted independently of edgecnn.measure."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return total


def _channel_prune(model, config):
    ctx = PassContext(example_input=torch.randn(1, 3, SIZE, SIZE))
    return run_pass("channel_prune", model, config, ctx), ctx.reports[-1]


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_pruned_model_runs_exports_and_matches_reported_macs(name, tmp_path):
    torch.manual_seed(0)
    model = TOPOLOGIES[name]().eval()
    macs_before = count_macs(model, SIZE)
    model, report = _channel_prune(model, {"density": 0.5, "round_to": 8})
    summary = report.summary
    assert summary["macs_before"] == macs_before
    assert summary["macs_after"] == count_macs(model, SIZE)
    assert sum(r["macs_after"] for r in report.rows) == summary["macs_after"]
    assert summary["macs_after"] < MAX_MACS_RATIO.get(name, 0.75) * macs_before
    for row in report.rows:
        if row["out_after"] != row["out_before"]:
            assert row["out_after"] % 8 == 0, row
        assert row["kind"] == "depthwise" or row["in_after"] == row["in_before"] or row["in_after"] % 8 == 0, row
    classifier = report.rows[-1]
    assert classifier["out_after"] == classifier["out_before"] == 10

    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(x).numpy()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, torch.randn(1, 3, SIZE, SIZE), str(path), dynamo=False, dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_shuffle_channels_are_frozen_and_branch_channels_pruned():
    model, report = _channel_prune(ToyShuffle().eval(), {"density": 0.5})
    rows = {r["layer"]: r for r in report.rows}
    assert rows["branches.0.0.0"]["out_after"] == 16  # inner branch channels: 32 -> 16
    assert rows["branches.0.3.0"]["out_after"] == 16  # feeds the shuffle: kept
    assert rows["stem.0"]["out_after"] == 32  # split + shuffle: kept
    assert report.summary["shuffle_chains"] == 2


def test_shufflenet_v1_unit_surgery_is_exact():
    """Removing channels whose contribution is zero must not change the output."""
    torch.manual_seed(0)
    model = create("shufflenet_v1", num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, SIZE, SIZE)
    analysis = Analysis(model, x[:1])
    units = [u for u in (ShuffleSpan.find(analysis, s) for s in analysis.chain_starts) if u is not None]
    assert len(units) == 15  # every unit but the first (no shuffle there)
    reference = copy.deepcopy(model)
    pruned_units = 0
    for unit in units:
        kept = unit.plan(0.5, 8)
        if kept is None:
            continue
        a, b = model.get_submodule(unit.conv_a), reference.get_submodule(unit.conv_b)
        g, block, b_group = unit.groups, a.out_channels // unit.groups, a.out_channels // b.groups
        kept_post = {(c % block) * g + c // block for c in kept}
        with torch.no_grad():
            for position in set(range(a.out_channels)) - kept_post:
                group = position // b_group
                per_group = b.out_channels // b.groups
                b.weight[group * per_group : (group + 1) * per_group, position % b_group] = 0
        unit.apply(kept)
        assert a.out_channels == len(kept) and len(kept) % 8 == 0
        pruned_units += 1
    assert pruned_units >= 10
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_mac_target_and_overrides():
    torch.manual_seed(0)
    model, report = _channel_prune(ToyResidual().eval(), {"target": "macs", "density": 0.6, "round_to": 8})
    assert 0.4 <= report.summary["macs_ratio"] <= 0.6
    assert report.summary["macs_after"] == count_macs(model, SIZE)
    model, report = _channel_prune(ToyConcat().eval(), {"density": 0.5, "overrides": {"squeeze1.0": 1.0}, "ignored_layers": ["stem.*"]})
    rows = {r["layer"]: r for r in report.rows}
    assert rows["squeeze1.0"]["out_after"] == 16 and rows["stem.0"]["out_after"] == 32
    assert rows["squeeze2.0"]["out_after"] == 8


def test_masks_follow_channel_pruning():
    torch.manual_seed(0)
    model = ToyResidual().eval()
    run_pass("prune", model, {"density": 0.5})
    model, _ = _channel_prune(model, {"density": 0.5})
    for name, mask in get_masks(model).items():
        assert mask.shape == model.get_submodule(name).weight.shape


@pytest.mark.parametrize(
    "config, message",
    [
        ({"density": 1.5}, "out of range"),
        ({"density": 0}, "out of range"),
        ({"overrides": {"nosuch": 0.5}}, "matches no layer"),
        ({"ignored_layers": ["nosuch*"]}, "matches no layer"),
        ({"importance": "magic"}, "importance"),
        ({"target": "flops"}, "target"),
    ],
)
def test_bad_configs_are_one_line_errors(config, message):
    with pytest.raises(UserError, match=message) as err:
        _channel_prune(ToyConcat(), config)
    assert "\n" not in str(err.value)
