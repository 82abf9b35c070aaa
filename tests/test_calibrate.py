"""Calibrators on known distributions, read from one streaming histogram."""

from __future__ import annotations

import pytest
import torch

from edgecnn.passes.quant.calibrate import HistogramCollector


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def collect(*tensors, **kwargs) -> HistogramCollector:
    collector = HistogramCollector(**kwargs)
    for t in tensors:
        collector.collect(t)
    return collector


def test_max_is_the_exact_abs_max_across_growing_batches():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(1000, generator=gen) * scale for scale in (0.5, 2.0, 8.0)]
    batches[1][3] = -37.25  # the largest magnitude is negative and in a middle batch
    c = collect(*batches)
    assert c.compute_amax("max", 127) == pytest.approx(37.25)
    assert not c.nonnegative


def test_growth_and_merging_keep_every_count():
    c = collect(torch.full((10,), 0.01), torch.linspace(0, 100, 5000), base_bins=64, max_bins=128)
    assert len(c.counts) <= 128
    assert float(c.counts.sum()) == pytest.approx(5010)


def test_percentile_on_uniform():
    x = torch.linspace(0, 10, 100_001)
    c = collect(x)
    assert c.nonnegative
    assert c.compute_amax("percentile", 255, percentile=99.0) == pytest.approx(9.9, abs=0.02)
    assert c.compute_amax("percentile", 255, percentile=50.0) == pytest.approx(5.0, abs=0.02)


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_mse_and_entropy_clip_outliers_of_a_gaussian(method):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200_000, generator=gen)
    x[:2] = torch.tensor([25.0, -24.0])  # rare outliers
    c = collect(x)
    amax = c.compute_amax(method, 127)
    # Both clip the outliers and keep the bulk of the gaussian; KL clips harder than MSE,
    # which pays the outliers' squared error.
    assert 2.5 < amax < (12.0 if method == "entropy" else 20.0), amax


def test_mse_range_depends_on_levels():
    """More levels make rounding cheaper, so the MSE range clips less (one-sided u8 vs s8)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(100_000, generator=gen).abs() ** 2
    c = collect(x)
    assert c.compute_amax("mse", 255) >= c.compute_amax("mse", 127)


def test_large_tensors_are_subsampled_but_max_stays_exact():
    x = torch.rand(1_000_000)
    x[123_457] = 42.0
    c = collect(x, sample_cap=1 << 16)
    assert c.total < 100_000
    assert c.compute_amax("max", 127) == 42.0
    assert c.compute_amax("percentile", 127, percentile=99.0) == pytest.approx(0.99, abs=0.02)


def test_all_zero_tensor():
    c = collect(torch.zeros(100))
    assert c.compute_amax("mse", 127) == 0.0
