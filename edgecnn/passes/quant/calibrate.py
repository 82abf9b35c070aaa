"""Activation calibration: one streaming histogram per tensor, four ways to read a range from it.

Each activation quantizer gets a :class:`HistogramCollector` that keeps a histogram of
``|x|`` with a fixed bin width and grows it (more bins, merged pairwise when too many) as
larger values arrive, so one forward pass over the calibration data is enough for every
calibrator and memory stays a few KB per tensor. Everything else (max, percentile, MSE,
entropy) is computed from the histogram afterwards, for each number of levels a target needs.

Hand-written because ONNX Runtime's calibrators keep every activation of every batch in
memory (gigabytes for MobileNetV2) and TensorRT's are not available off-GPU.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch

BASE_BINS = 2048
MAX_BINS = 8192
SAMPLE_CAP = 1 << 17  # values histogrammed per tensor per batch


class HistogramCollector:
    """Streaming histogram of ``|x|`` plus the exact abs max and the sign of the minimum."""

    def __init__(self, base_bins: int = BASE_BINS, max_bins: int = MAX_BINS, sample_cap: int = SAMPLE_CAP):
        self.base_bins = base_bins
        self.sample_cap = sample_cap
        self.max_bins = max_bins
        self.width: Optional[float] = None
        self.counts: Optional[torch.Tensor] = None  # float64 counts, bin i = [i*w, (i+1)*w)
        self.amax = 0.0
        self.min = math.inf
        self.total = 0

    def collect(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        low, high = torch.aminmax(x)
        self.min = min(self.min, float(low))
        batch_max = max(float(high), -float(low))
        self.amax = max(self.amax, batch_max)
        # The histogram reads a strided subsample of large tensors: millions of values per
        # tensor still resolve the 1e-4 tails, and histogramming every value of every
        # activation would cost more than the forward pass itself. The max stays exact.
        values = x.reshape(-1)
        if values.numel() > self.sample_cap:
            stride = values.numel() // self.sample_cap
            stride += 1 - stride % 2  # odd stride: does not lock onto even row/channel sizes
            values = values[::stride]
        values = values.float().abs()
        self.total += values.numel()
        if batch_max == 0.0:
            if self.counts is None:
                self.counts = torch.zeros(self.base_bins, dtype=torch.float64)
            self.counts[0] += values.numel()
            return
        if self.width is None:
            zeros = float(self.counts[0]) if self.counts is not None else 0.0
            self.width = batch_max / self.base_bins
            self.counts = torch.zeros(self.base_bins, dtype=torch.float64)
            self.counts[0] += zeros
        needed = int(math.floor(batch_max / self.width)) + 1
        if needed > len(self.counts):
            self._grow(needed)
        bins = len(self.counts)
        index = (values * (1.0 / self.width)).long().clamp_(max=bins - 1)
        self.counts += torch.bincount(index, minlength=bins).double()

    def _grow(self, needed: int) -> None:
        while needed > self.max_bins:
            # Merge neighbouring bins: width doubles, exact (no interpolation).
            counts = self.counts
            if len(counts) % 2:
                counts = torch.cat([counts, counts.new_zeros(1)])
            self.counts = counts.view(-1, 2).sum(1)
            self.width *= 2
            needed = (needed + 1) // 2
        if needed > len(self.counts):
            self.counts = torch.cat([self.counts, self.counts.new_zeros(needed - len(self.counts))])

    # -- reading ranges -----------------------------------------------------------------
    @property
    def nonnegative(self) -> bool:
        return self.min >= 0.0

    def histogram(self) -> tuple[np.ndarray, float]:
        """(counts, bin width) trimmed to the last non-empty bin."""
        counts = self.counts.numpy() if self.counts is not None else np.zeros(1)
        nonzero = np.nonzero(counts)[0]
        last = int(nonzero[-1]) + 1 if len(nonzero) else 1
        return counts[:last].astype(np.float64), (self.width or 1.0)

    def compute_amax(self, method: str, levels: int, percentile: float = 99.99) -> float:
        """The range for ``levels`` positive quantization steps (127 symmetric, 255 one-sided)."""
        if self.amax == 0.0 or self.counts is None:
            return 0.0
        if method == "max":
            return self.amax
        counts, width = self.histogram()
        if method == "percentile":
            return percentile_amax(counts, width, percentile, self.amax)
        if method == "mse":
            return mse_amax(counts, width, levels, self.amax)
        if method == "entropy":
            return entropy_amax(counts, width, levels, self.amax)
        raise ValueError(f"unknown calibrator {method!r}")


def percentile_amax(counts: np.ndarray, width: float, percentile: float, amax: float) -> float:
    cdf = np.cumsum(counts) / counts.sum()
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min((index + 1) * width, amax))


def _candidate_bins(n: int, start: int, count: int = 256) -> np.ndarray:
    start = max(1, min(start, n))
    return np.unique(np.linspace(start, n, num=min(count, n - start + 1)).round().astype(np.int64))


def mse_amax(counts: np.ndarray, width: float, levels: int, amax: float) -> float:
    """Range minimising the expected squared quantization error (rounding + clipping).

    For a range ``a`` with step ``a / levels``: values inside cost ``step**2 / 12`` each
    (uniform rounding error; the first bin, exact zeros after ReLU, costs nothing), values
    beyond cost ``(c - a)**2``. Suffix sums give every candidate in one vectorised pass.
    """
    n = len(counts)
    centres = (np.arange(n) + 0.5) * width
    # Suffix sums of count, count*c, count*c^2 over bins >= i.
    s0 = np.cumsum(counts[::-1])[::-1]
    s1 = np.cumsum((counts * centres)[::-1])[::-1]
    s2 = np.cumsum((counts * centres**2)[::-1])[::-1]
    candidates = np.arange(max(1, n // 16), n + 1)
    ranges = candidates * width
    tail = np.where(candidates < n, candidates, n - 1)
    has_tail = candidates < n
    clip_err = np.where(has_tail, s2[tail] - 2 * ranges * s1[tail] + ranges**2 * s0[tail], 0.0)
    inside = s0[0] - np.where(has_tail, s0[tail], 0.0) - counts[0]
    round_err = (ranges / levels) ** 2 / 12.0 * np.maximum(inside, 0.0)
    best = float(ranges[int(np.argmin(clip_err + round_err))])
    return float(min(best, amax))


def _coarsen(counts: np.ndarray, width: float, max_bins: int) -> tuple[np.ndarray, float]:
    """Merge neighbouring bins until at most ``max_bins`` remain (exact)."""
    while len(counts) > max_bins:
        if len(counts) % 2:
            counts = np.append(counts, 0.0)
        counts = counts.reshape(-1, 2).sum(1)
        width *= 2
    return counts, width


def entropy_amax(counts: np.ndarray, width: float, levels: int, amax: float) -> float:
    """TensorRT-style KL calibration: the clip range whose ``levels``-bin quantized
    distribution is closest (KL divergence) to the clipped reference distribution."""
    counts, width = _coarsen(counts, width, 1024)
    n = len(counts)
    if n <= levels:
        return amax
    counts = counts.copy()
    counts[0] = 0.0  # exact zeros (ReLU) dominate and are represented exactly anyway
    candidates = _candidate_bins(n, levels, count=128)
    best, best_kl = amax, math.inf
    for i in candidates:
        i = int(i)
        reference = counts[:i].copy()
        reference[i - 1] += counts[i:].sum()
        if reference.sum() == 0:
            continue
        # Quantize bins [0, i) into ``levels`` groups, spread each group's mass over its
        # non-empty bins, compare.
        group = (np.arange(i) * levels) // i
        nonempty = counts[:i] > 0
        group_mass = np.bincount(group, weights=counts[:i], minlength=levels)
        group_nonempty = np.bincount(group, weights=nonempty.astype(np.float64), minlength=levels)
        expanded = np.where(nonempty, group_mass[group] / np.maximum(group_nonempty[group], 1), 0.0)
        p = reference / reference.sum()
        q_total = expanded.sum()
        if q_total == 0:
            continue
        q = expanded / q_total
        mask = p > 0
        q_safe = np.where(q[mask] > 0, q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q_safe)))
        if kl < best_kl:
            best_kl, best = kl, i * width
    return float(min(best, amax))


def iterate_batches(batches: Iterable, limit: Optional[int] = None):
    """Yield input tensors from an iterable of tensors, arrays or (images, labels) tuples."""
    for i, batch in enumerate(batches):
        if limit is not None and i >= limit:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        yield batch.float()


def calibrate(
    model: torch.nn.Module,
    batches: Iterable,
    method: str = "entropy",
    percentile: float = 99.99,
    num_batches: Optional[int] = None,
    progress: bool = True,
) -> int:
    """Run the calibration data through ``model`` once and set every activation quantizer's
    range (for the symmetric 127-level and, for non-negative tensors, the one-sided 255-level
    encodings). Returns the number of images seen."""
    from edgecnn.passes.quant.quantizers import quantizers

    all_quantizers = quantizers(model)
    act_quantizers = [q for _, q in all_quantizers if not q.is_weight]
    weight_states = [(q, q.enabled) for _, q in all_quantizers if q.is_weight]
    for q, _ in weight_states:  # ranges are measured on the float model
        q.enabled = False
    for q in act_quantizers:
        q.collector = HistogramCollector()
        q.calibrating = True
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _progress(progress, "calibrating", num_batches) as bar:
            for batch in iterate_batches(batches, num_batches):
                model(batch)
                seen += len(batch)
                bar(len(batch))
        for q in act_quantizers:
            collector = q.collector
            if collector.counts is None:
                continue  # never reached (an unused branch): stays uncalibrated = identity
            one_sided = collector.compute_amax(method, 255, percentile) if collector.nonnegative else None
            q.set_amax(collector.compute_amax(method, 127, percentile), collector.nonnegative, one_sided)
    finally:
        for q in act_quantizers:
            q.calibrating = False
            q.collector = None
        for q, enabled in weight_states:
            q.enabled = enabled
        model.train(was_training)
    return seen


class _progress:
    """A rich progress bar counting images (silent when disabled)."""

    def __init__(self, enabled: bool, label: str, total_batches: Optional[int]):
        self.enabled = enabled
        self.label = label
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} images"), TimeElapsedColumn(), transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=None)
        return self.advance

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
