"""Weight sharing with sensitivity: Fisher-weighted k-means and per-layer bit allocation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.passes import PassContext, run_pass
from edgecnn.passes.share_alloc import allocate_bits, fisher_diagonal, index_cost_bytes
from edgecnn.passes.weight_share import kmeans_1d, shared_layers


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 64, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight[torch.rand_like(m.weight) < 0.5] = 0
    return net


def _calib(n: int = 8):
    return [torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))]


def _objective(values, weights, centroids, assign) -> float:
    return float((weights * (values - centroids[assign]) ** 2).sum())


def test_weighted_kmeans_lowers_the_weighted_objective():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 3000)
    weights = np.where(np.abs(values) > 1.5, 50.0, 1.0) * rng.uniform(0.5, 1.5, values.size)
    plain = kmeans_1d(values, 4)
    weighted = kmeans_1d(values, 4, weights=weights)
    assert _objective(values, weights, *weighted) < 0.9 * _objective(values, weights, *plain)
    # All-equal weights are plain k-means.
    np.testing.assert_allclose(kmeans_1d(values, 4, weights=np.full(values.size, 3.0))[0], plain[0])


def test_fisher_of_a_softmax_layer_matches_its_closed_form():
    # logits = W x: d log p_y / dW_kj = (1[k=y] - p_k) x_j, so E_y[grad**2] = p_k (1 - p_k) x_j**2.
    torch.manual_seed(0)
    layer = nn.Linear(3, 4, bias=False)
    x = torch.tensor([[1.0, -2.0, 0.5]])
    fisher = fisher_diagonal(layer, [("fc", layer)], [x.repeat(3000, 1)], images=3000)["fc"]
    p = torch.softmax(layer(x), 1)[0].detach()
    expected = (p * (1 - p))[:, None] * x**2
    torch.testing.assert_close(fisher, expected, rtol=0.1, atol=1e-4)
    assert layer.weight.grad is None


def test_allocation_is_the_exact_knapsack_optimum():
    rng = np.random.default_rng(3)
    options = {f"l{i}": {b: (float(rng.uniform(1, 10) * b), float(rng.uniform(1, 5) / 2**b)) for b in (2, 4, 6)} for i in range(5)}
    budget = sum(options[n][4][0] for n in options)
    chosen = allocate_bits(options, budget, unit=0.01)
    best = min(
        (combo for combo in itertools.product((2, 4, 6), repeat=5)
         if sum(options[f"l{i}"][b][0] for i, b in enumerate(combo)) <= budget),
        key=lambda combo: sum(options[f"l{i}"][b][1] for i, b in enumerate(combo)),
    )
    assert [chosen[f"l{i}"] for i in range(5)] == list(best)
    with pytest.raises(ValueError, match="budget"):
        allocate_bits(options, 1.0)


def _estimated_bytes(model) -> float:
    return sum(index_cost_bytes(s.index[s.index >= 0].numpy(), s.centroids.numel())
               for _, m in shared_layers(model) for s in [m._edgecnn_weight_share])


@pytest.mark.parametrize("budget", [1.0, 1.3])
def test_pass_allocates_bits_from_the_grid_within_the_size_budget(budget):
    uniform_ctx = PassContext(progress=False, calib_batches=_calib())
    uniform = run_pass("weight_share", _net(), {"bits": 3, "bit_choices": [3]}, uniform_ctx)
    ctx = PassContext(progress=False, calib_batches=_calib())
    config = {"bits": 3, "bit_choices": [2, 3, 4, 5], "layer_bits": {"6": 3}, "size_budget": budget}
    net = run_pass("weight_share", _net(), config, ctx)
    rows = {r["layer"]: r for r in ctx.reports[-1].rows}
    assert rows["6"]["bits"] == 3, "a layer_bits override stays fixed"
    for name, module in shared_layers(net):
        assert rows[name]["bits"] in (2, 3, 4, 5)
        w = module.weight.detach().flatten()
        assert torch.unique(w[w != 0]).numel() <= 2 ** rows[name]["bits"]
        assert module._edgecnn_weight_share.centroids.numel() <= 2 ** rows[name]["bits"]
    # Within the budget (up to the knapsack's rounding: 1e-5 of the budget per layer).
    assert _estimated_bytes(net) <= budget * _estimated_bytes(uniform) * 1.0001
    assert ctx.reports[-1].summary["fisher_error"] <= uniform_ctx.reports[-1].summary["fisher_error"]
    if budget > 1:  # more bytes must buy bits where they cut the Fisher-weighted error
        assert {r["bits"] for r in rows.values()} - {2, 3}
        assert ctx.reports[-1].summary["fisher_error"] < uniform_ctx.reports[-1].summary["fisher_error"]


def test_pass_fisher_weighting_lowers_the_fisher_weighted_error():
    plain_ctx = PassContext(progress=False, calib_batches=_calib())
    run_pass("weight_share", _net(), {"bits": 2, "bit_choices": [2]}, plain_ctx)
    ctx = PassContext(progress=False, calib_batches=_calib())
    run_pass("weight_share", _net(), {"bits": 2, "weighting": "fisher"}, ctx)
    assert ctx.reports[-1].summary["fisher_error"] < plain_ctx.reports[-1].summary["fisher_error"]


def test_sensitivity_needs_calibration_images_and_valid_choices():
    with pytest.raises(UserError, match="calib"):
        run_pass("weight_share", _net(), {"weighting": "fisher"}, PassContext(progress=False))
    with pytest.raises(UserError, match="calib"):
        run_pass("weight_share", _net(), {"bit_choices": [4, 6]}, PassContext(progress=False, calib_batches=[]))
    with pytest.raises(UserError, match="bit choices"):
        run_pass("weight_share", _net(), {"bit_choices": [1, 6]})
    with pytest.raises(UserError, match="size_budget"):
        run_pass("weight_share", _net(), {"bits": 6, "bit_choices": [6], "size_budget": 0.2},
                 PassContext(progress=False, calib_batches=_calib()))
