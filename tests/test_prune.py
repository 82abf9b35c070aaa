"""Weight pruning: exact densities, Deep Compression's SqueezeNet count, 2:4, persistent masks."""

from __future__ import annotations

import copy
import io
import math

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from edgecnn.errors import UserError
from edgecnn.models import create
from edgecnn.passes.prune import get_masks, keep_count, load_pruned_state_dict, reapply_masks, remove_masks
from edgecnn.passes.registry import PassContext, run_pass
from edgecnn.passes.schedules import (
    DEEP_COMPRESSION_SQUEEZENET1_0,
    DEEP_COMPRESSION_SQUEEZENET1_0_NONZERO,
    polynomial_density,
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


class ToyNet(nn.Module):
    """A small user network: stem, depthwise + residual add, concat of two branches, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.a = nn.Conv2d(16, 8, 1)
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.dw(x)
        x = torch.cat([self.a(x), self.b(x)], 1)
        return self.fc(x.mean([2, 3]))


def _prune(model, config):
    ctx = PassContext()
    return run_pass("prune", model, config, ctx), ctx.reports[-1]


def test_deep_compression_squeezenet_count():
    torch.manual_seed(0)
    model = create("squeezenet1_0")
    for module in model.modules():  # a dense model: the zoo initialises biases to zero
        if isinstance(module, nn.Conv2d):
            nn.init.uniform_(module.bias, 0.01, 0.1)
    assert sum(p.numel() for p in model.parameters()) == 1_248_424
    model, report = _prune(model, {"schedule": "deep_compression_squeezenet1_0"})
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    assert abs(nonzero - DEEP_COMPRESSION_SQUEEZENET1_0_NONZERO) <= 0.001 * DEEP_COMPRESSION_SQUEEZENET1_0_NONZERO
    assert report.summary["kept_params"] == nonzero
    for name, density in DEEP_COMPRESSION_SQUEEZENET1_0.items():
        weight = model.get_submodule(name).weight
        assert int(torch.count_nonzero(weight)) == keep_count(density, weight.numel()), name
        assert int(torch.count_nonzero(model.get_submodule(name).bias)) == model.get_submodule(name).bias.numel()
    conv10 = model.get_submodule("classifier.1")
    assert int(torch.count_nonzero(conv10.weight)) + conv10.bias.numel() == 103_400


def test_per_layer_densities_are_exact_and_later_globs_win():
    torch.manual_seed(0)
    model, report = _prune(ToyNet(), {"density": 0.3, "schedule": {"*": 0.5, "fc": 0.25, "dw": 0.9}, "exclude": ["stem"]})
    expected = {"dw": 0.9, "a": 0.5, "b": 0.5, "fc": 0.25}
    for name, density in expected.items():
        weight = model.get_submodule(name).weight
        assert int(torch.count_nonzero(weight)) == keep_count(density, weight.numel())
        assert int(torch.count_nonzero(model.get_submodule(name).bias)) == model.get_submodule(name).bias.numel()
    assert int(torch.count_nonzero(model.stem.weight)) == model.stem.weight.numel()
    assert {r["layer"] for r in report.rows} == set(expected)
    # The kept weights are the largest ones.
    torch.manual_seed(0)
    original = ToyNet()
    count = keep_count(0.25, original.fc.weight.numel())
    largest = original.fc.weight.detach().abs().flatten().sort(descending=True).values[:count]
    assert torch.equal(model.fc.weight.detach().abs().flatten().sort(descending=True).values[:count], largest)


def test_global_density_counts_over_all_layers():
    torch.manual_seed(0)
    model = create("squeezenet1_1", num_classes=10)
    model, report = _prune(model, {"density": 0.2, "scope": "global", "kinds": ["conv", "pointwise"]})
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    total = sum(m.weight.numel() for m in layers)
    kept = sum(int(torch.count_nonzero(m.weight)) for m in layers)
    assert kept == keep_count(0.2, total)
    densities = {r["density"] for r in report.rows}
    assert len(densities) > 3  # global ranking: layers end at different densities


def test_ties_are_broken_deterministically():
    layer = nn.Linear(10, 4, bias=False)
    nn.init.constant_(layer.weight, 0.5)
    model = nn.Sequential(layer)
    _prune(model, {"density": 0.25})
    assert layer.weight.flatten().nonzero().flatten().tolist() == list(range(keep_count(0.25, 40)))


def test_2_4_pattern_and_skipped_layers():
    torch.manual_seed(0)
    model = create("mobilenet_v2", num_classes=10)
    model, report = _prune(model, {"mode": "2:4"})
    notes = {r["layer"]: r["note"] for r in report.rows}
    assert notes["features.0.0"].startswith("skipped")  # 3-channel stem
    assert notes["features.1.conv.0.0"].startswith("skipped")  # depthwise
    pruned = [n for n, note in notes.items() if note == "2:4"]
    assert len(pruned) > 30
    for name in pruned:
        weight = model.get_submodule(name).weight
        groups = weight.detach().movedim(1, -1).reshape(-1, 4)
        assert ((groups != 0).sum(1) == 2).all(), name
        assert name in get_masks(model)
    # The two kept weights are the two largest of each group.
    torch.manual_seed(0)
    original = create("mobilenet_v2", num_classes=10).get_submodule(pruned[3]).weight.detach()
    groups = original.abs().movedim(1, -1).reshape(-1, 4)
    kept = model.get_submodule(pruned[3]).weight.detach().abs().movedim(1, -1).reshape(-1, 4)
    assert torch.equal(kept.sort(1).values[:, 2:], groups.sort(1).values[:, 2:])


def test_masks_survive_training_deepcopy_state_dict_and_onnx(tmp_path):
    torch.manual_seed(0)
    model, _ = _prune(ToyNet(), {"density": 0.4})
    masks = {k: v.clone() for k, v in get_masks(model).items()}
    assert set(masks) == {"stem", "dw", "a", "b", "fc"}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 16, 16)).square().mean().backward()
        optimizer.step()
        reapply_masks(model)
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        assert (weight[~mask] == 0).all() and (weight[mask] != 0).all()

    clone = copy.deepcopy(model)
    assert set(get_masks(clone)) == set(masks)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = ToyNet()
    load_pruned_state_dict(fresh, torch.load(io.BytesIO(buffer.getvalue())))
    for name, mask in masks.items():
        assert torch.equal(get_masks(fresh)[name], mask)
        assert torch.equal(fresh.get_submodule(name).weight, model.get_submodule(name).weight)

    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model.eval(), torch.randn(1, 3, 16, 16), str(path), dynamo=False)
    graph = onnx.load(str(path)).graph
    assert not any("mask" in init.name for init in graph.initializer)
    assert not {node.op_type for node in graph.node} & {"Mul", "Where", "Cast"}  # no mask arithmetic
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    zeros = (weights["fc.weight"] == 0).sum() if "fc.weight" in weights else None
    assert zeros is None or zeros == int((~masks["fc"]).sum())
    assert any((w == 0).mean() > 0.5 for w in weights.values() if w.ndim == 4)

    assert remove_masks(model) == 5 and get_masks(model) == {}
    assert reapply_masks(model) == 0  # a no-op without masks


def test_repruning_keeps_earlier_zeros():
    torch.manual_seed(0)
    model, _ = _prune(ToyNet(), {"density": 0.5})
    first = get_masks(model)["b"].clone()
    _prune(model, {"density": 0.8})
    assert not (get_masks(model)["b"] & ~first).any()


@pytest.mark.parametrize(
    "config, message",
    [
        ({"density": 1.5}, "density 1.5 is out of range"),
        ({"density": -0.1}, "out of range"),
        ({"schedule": {"features.0": 2}}, "out of range"),
        ({"schedule": {"nosuch.*": 0.5}}, "matches no layer"),
        ({"mode": "3:8", "density": 0.5}, "mode"),
        ({"schedule": "nosuch"}, "unknown schedule"),
        ({"density": 0.5, "include": ["typo*"]}, "matches no layer"),
        ({}, "needs 'density'"),
        ({"scope": "global", "schedule": {"features.0": 0.5}}, "global pruning needs 'density'"),
    ],
)
def test_bad_configs_are_one_line_errors(config, message):
    with pytest.raises(UserError, match=message) as err:
        _prune(create("squeezenet1_1", num_classes=10), config)
    assert "\n" not in str(err.value)


def test_polynomial_density_schedule():
    assert polynomial_density(0, 100, 0.2) == pytest.approx(1.0)
    assert polynomial_density(100, 100, 0.2) == 0.2
    values = [polynomial_density(s, 100, 0.2) for s in range(0, 101, 10)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert math.isclose(polynomial_density(50, 100, 0.2), 0.2 + 0.8 * 0.125)


def _images(n, seed):
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return nn.functional.avg_pool2d(x, 3, 1, 1)  # neighbouring pixels correlated, as in photos


def test_reconstruct_refits_the_kept_weights_and_keeps_the_masks():
    """The same masks as plain magnitude pruning, the kept weights refit to each layer's unpruned
    output: on images the refit never saw, the network's output moves less."""
    torch.manual_seed(3)
    dense = ToyNet().eval()
    config = {"density": 0.4, "exclude": ["fc"]}
    plain, _ = _prune(copy.deepcopy(dense), config)
    ctx = PassContext(calib_batches=[_images(16, 0), (_images(16, 1), torch.zeros(16))])
    refit = run_pass("prune", copy.deepcopy(dense), {**config, "reconstruct": True, "reconstruct_images": 24}, ctx)
    report = ctx.reports[-1]
    assert report.summary["reconstructed"] is True
    masks_plain, masks_refit = get_masks(plain), get_masks(refit)
    assert masks_plain.keys() == masks_refit.keys() and all(torch.equal(masks_plain[k], masks_refit[k]) for k in masks_plain)
    for name, mask in masks_refit.items():
        assert torch.count_nonzero(refit.get_submodule(name).weight[~mask]) == 0
    assert all(0 <= row["output_error_left"] < 1 for row in report.rows)
    held_out = _images(32, 7)
    with torch.no_grad():
        target = dense(held_out)
        assert ((refit(held_out) - target) ** 2).mean() < 0.7 * ((plain(held_out) - target) ** 2).mean()


def test_reconstruct_without_calibration_images_is_a_one_line_error():
    with pytest.raises(UserError, match="needs calibration images") as err:
        _prune(ToyNet(), {"density": 0.5, "reconstruct": True})
    assert "\n" not in str(err.value)
