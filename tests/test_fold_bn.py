"""BatchNorm folding: outputs unchanged on every zoo model and on user networks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.models import available, create
from edgecnn.passes.fold_bn import fold_batchnorm
from edgecnn.passes.registry import PassContext, run_pass


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, so that a wrong fold shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model


def _assert_same(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class ToyNet(nn.Module):
    """Residual add, concat, depthwise and grouped convs, a channel shuffle, Linear + BN1d."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.left = nn.Conv2d(16, 8, 1)
        self.left_bn = nn.BatchNorm2d(8)
        self.right = nn.Conv2d(16, 8, 3, padding=1, groups=2)
        self.right_bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(16, 12)
        self.fc_bn = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.dw_bn(self.dw(x))
        x = torch.cat([torch.relu(self.left_bn(self.left(x))), self.right_bn(self.right(x))], 1)
        x = shuffle(x, 2).mean([2, 3])
        return self.head(torch.relu(self.fc_bn(self.fc(x))))


@pytest.mark.slow
@pytest.mark.parametrize("name", available())
def test_fold_is_exact_on_every_zoo_model(name):
    torch.manual_seed(0)
    model = _randomize_bn(create(name, num_classes=10)).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, rows = fold_batchnorm(copy.deepcopy(model))
    assert sum(r["status"] == "folded" for r in rows) == n_bn
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    _assert_same(model, folded, torch.randn(2, 3, 64, 64))


def test_fold_toy_net_keeps_names_and_outputs():
    torch.manual_seed(0)
    model = _randomize_bn(ToyNet()).eval()
    ctx = PassContext()
    folded = run_pass("fold_bn", copy.deepcopy(model), {}, ctx)
    report = ctx.reports[-1]
    assert report.summary == {"folded": 5, "kept": 0}
    assert {r["into"] for r in report.rows} == {"stem.0", "dw", "left", "right", "fc"}
    assert isinstance(folded.stem[1], nn.Identity) and isinstance(folded.fc_bn, nn.Identity)
    assert "stem.0.weight" in folded.state_dict() and "stem.0.bias" in folded.state_dict()
    _assert_same(model, folded, torch.randn(3, 3, 32, 32))


def test_identity_bn_is_a_numerical_no_op():
    """The shared MobileNet weights store BN as identity + bias: weight 1, mean 0, var 1 - eps."""
    model = create("mobilenet_v2", num_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1.0)
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
            m.bias.data.normal_()
    weights = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    bn_bias = model.features[0][1].bias.clone()
    folded, _ = fold_batchnorm(copy.deepcopy(model))
    for name, weight in weights.items():
        assert torch.equal(folded.get_submodule(name).weight, weight)
    assert torch.equal(folded.features[0][0].bias, bn_bias)
    _assert_same(model, folded, torch.randn(1, 3, 64, 64))


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, the Sequential fallback still folds."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.extra = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.body(x)
        return self.extra(x) if x.sum() > 0 else x


def test_untraceable_model_falls_back_and_reports_kept():
    model = _randomize_bn(Untraceable()).eval()
    folded, rows = fold_batchnorm(copy.deepcopy(model))
    status = {r["bn"]: r["status"] for r in rows}
    assert status["body.1"] == "folded" and status["extra"].startswith("kept")
    _assert_same(model, folded, torch.rand(1, 3, 16, 16))
    with pytest.raises(UserError, match="cannot be folded") as err:
        run_pass("fold_bn", copy.deepcopy(model), {"require_all": True})
    assert "\n" not in str(err.value)


def test_bn_whose_conv_output_is_shared_is_kept():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _randomize_bn(Shared()).eval()
    folded, rows = fold_batchnorm(copy.deepcopy(model))
    assert rows[0]["status"].startswith("kept")
    _assert_same(model, folded, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_fold_is_a_no_op_on_shared_mobilenet_weights(shared_data, name):
    """Their BNs are identity + bias: conv weights must come out bit-exact, outputs unchanged."""
    model = create(name).eval()
    model.load_state_dict(torch.load(shared_data / "weights" / f"{name}.pth", map_location="cpu"), strict=True)
    weights = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    folded, rows = fold_batchnorm(copy.deepcopy(model))
    assert all(r["status"] == "folded" for r in rows)
    for layer, weight in weights.items():
        assert torch.equal(folded.get_submodule(layer).weight, weight), layer
    _assert_same(model, folded, torch.randn(1, 3, 96, 96))
