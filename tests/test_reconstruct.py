"""Layer-wise reconstruction of pruned weights (edgecnn.passes.reconstruct)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecnn.passes.reconstruct import input_grams, layer_columns, output_error, refit_kept
from edgecnn.search.size import magnitude_mask


def correlated_images(n=12, channels=6, size=9, seed=0):
    """Inputs correlated across channels and neighbouring pixels (as real feature maps are): what refitting exploits."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 2, size, size, generator=gen)
    mix = torch.randn(channels, 2, generator=gen)
    mixed = torch.einsum("nchw,dc->ndhw", base, mix) + 0.1 * torch.randn(n, channels, size, size, generator=gen)
    return nn.functional.avg_pool2d(mixed, 3, 1, 1)


LAYERS = {
    "conv": lambda: nn.Conv2d(6, 8, 3, padding=1, bias=False),
    "strided": lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
    "grouped": lambda: nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False),
    "depthwise": lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
    "linear": lambda: nn.Linear(6, 5, bias=False),
}


def _inputs(kind):
    images = correlated_images()
    return images.mean((2, 3)) if kind == "linear" else images


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_gram_reproduces_the_layer_output_energy(kind):
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    x = _inputs(kind)
    grams = input_grams(layer, [("layer", layer)], torch.split(x, 5))
    zero = torch.zeros_like(layer.weight)
    with torch.no_grad():
        energy = float((layer(x).double() ** 2).sum())
    assert output_error(layer.weight, zero, grams["layer"]) == pytest.approx(energy, rel=1e-6)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_refit_is_the_least_squares_fit_of_the_kept_weights(kind):
    torch.manual_seed(1)
    layer = LAYERS[kind]()
    x = _inputs(kind)
    gram = input_grams(layer, [("layer", layer)], [x])["layer"]
    weight = layer.weight.detach()
    keep = torch.from_numpy(magnitude_mask(weight, 0.5)).reshape(weight.shape)
    refit = refit_kept(weight, keep, gram, damping=0.0)
    assert torch.equal(refit[~keep], torch.zeros_like(refit[~keep]))  # dropped weights stay exactly zero
    magnitude = output_error(weight, weight * keep, gram)
    assert output_error(weight, refit, gram) < 0.9 * magnitude
    # each output channel's kept weights are the least-squares fit on that channel's own input columns
    cols = layer_columns(layer, x).double()
    flat, kept = weight.reshape(weight.shape[0], -1).double(), keep.reshape(weight.shape[0], -1)
    per_group = weight.shape[0] // cols.shape[0]
    for o in range(weight.shape[0]):
        columns = cols[o // per_group]
        best = torch.linalg.lstsq(columns[kept[o]].T, columns.T @ flat[o]).solution
        assert torch.allclose(refit.reshape(weight.shape[0], -1)[o][kept[o]].double(), best, atol=1e-4)
    # the columns each output sees are the layer's: the refit weights reproduce the error the Gram predicts
    with torch.no_grad():
        err = float(((layer(x) - nn.functional.linear(x, refit) if kind == "linear"
                      else layer(x) - nn.functional.conv2d(x, refit, None, layer.stride, layer.padding, layer.dilation, layer.groups)) ** 2).sum())
    assert err == pytest.approx(output_error(weight, refit, gram), rel=1e-4)


def test_the_ridge_keeps_undetermined_weights_near_their_old_values():
    """A linear layer with more inputs than images: without the ridge the kept weights are not determined."""
    torch.manual_seed(2)
    layer = nn.Linear(40, 3, bias=False)
    x = torch.randn(5, 40)
    gram = input_grams(layer, [("layer", layer)], [x])["layer"]
    keep = torch.ones_like(layer.weight, dtype=torch.bool)
    refit = refit_kept(layer.weight, keep, gram)  # keeping everything changes nothing
    assert torch.allclose(refit, layer.weight.detach(), atol=1e-5)


def test_mismatched_gram_and_unsupported_layers_are_refused():
    with pytest.raises(ValueError, match="does not match"):
        refit_kept(torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool), torch.eye(5)[None].double())
    with pytest.raises(TypeError, match="Conv2d and Linear"):
        layer_columns(nn.Conv1d(2, 2, 3), torch.randn(1, 2, 8))
