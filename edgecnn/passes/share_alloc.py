"""Sensitivity for weight sharing: a diagonal Fisher estimate and per-layer bit allocation.

A weight's damage when it moves to its centroid is, to second order, proportional to the
loss curvature at that weight. For distillation from the unchanged model the loss is the
KL divergence to the model's own outputs, whose Hessian at the unchanged weights is the
Fisher information of the output distribution (Choi et al. 2017 use the Hessian diagonal
the same way). Its diagonal is estimated from the squared gradient of the log-likelihood of
a label drawn from the model's own (tempered) softmax, one image at a time.

The same numbers make layers comparable: ``sum F_i (w_i - c_i)**2`` over all layers estimates
the loss increase, so bits can be moved to the layers where they buy most, for the same
entropy-coded size.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CODEBOOK_ENTRY_BYTES = 6  # a float32 centroid plus its share of the index coder's frequency table


def fisher_diagonal(
    model: nn.Module, layers: list[tuple[str, nn.Module]], batches: Iterable, images: int, temperature: float = 1.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Mean squared log-likelihood gradient per weight of each layer in ``layers``.

    Labels are sampled from ``softmax(logits / temperature)`` of ``model`` itself (the true
    Fisher, not the empirical one: hard labels of the data would make it the curvature of a
    different loss). ``batches`` yields input tensors (or (inputs, labels) tuples; labels are
    ignored). The model is left in its mode, with gradients cleared.
    """
    gen = torch.Generator().manual_seed(seed)
    sums = {name: torch.zeros_like(m.weight, dtype=torch.float64) for name, m in layers}
    was_training = model.training
    model.eval()
    seen = 0
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = torch.as_tensor(batch).float()
        for x in batch:
            if seen >= images:
                break
            model.zero_grad(set_to_none=True)
            logits = model(x[None]) / temperature
            label = torch.multinomial(F.softmax(logits.detach().double(), 1)[0], 1, generator=gen)
            (temperature * F.log_softmax(logits, 1)[0, label]).sum().backward()
            for name, m in layers:
                if m.weight.grad is not None:
                    sums[name] += m.weight.grad.double() ** 2
            seen += 1
        if seen >= images:
            break
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if seen == 0:
        raise ValueError("no images to estimate the Fisher information from")
    return {name: (s / seen).float() for name, s in sums.items()}


def index_cost_bytes(assign: np.ndarray, clusters: int) -> float:
    """Estimated shipped bytes of one layer's centroid indices (order-0 entropy) plus its codebook."""
    counts = np.bincount(assign, minlength=clusters).astype(np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum() / 8 + CODEBOOK_ENTRY_BYTES * counts.size)


def allocate_bits(options: dict[str, dict[int, tuple[float, float]]], budget: float, unit: Optional[float] = None) -> dict[str, int]:
    """Per-layer bits minimising the summed distortion with the summed cost <= ``budget``.

    ``options[layer][bits] = (cost_bytes, distortion)``. Exact multiple-choice knapsack by
    dynamic programming over costs rounded up to ``unit`` bytes (default: budget / 100000),
    with one unit of slack per layer so that a budget summed from the same costs is always
    feasible: the chosen cost exceeds ``budget`` by less than one unit per layer. Raises
    ValueError when even the cheapest choice of every layer does not fit.
    """
    unit = unit or max(budget / 100000, 1e-9)
    slots = int(np.floor(budget / unit)) + len(options)
    names = list(options)
    best = np.zeros(slots + 1)  # best[c]: least distortion of the layers so far at cost <= c
    picks = []
    for name in names:
        choices = sorted(options[name].items())
        new = np.full(slots + 1, np.inf)
        pick = np.full(slots + 1, -1, np.int64)
        for j, (_, (cost, distortion)) in enumerate(choices):
            c = int(np.ceil(cost / unit - 1e-9))
            if c > slots:
                continue
            shifted = np.full(slots + 1, np.inf)
            shifted[c:] = best[: slots + 1 - c] + distortion
            better = shifted < new
            new[better], pick[better] = shifted[better], j
        best = new
        picks.append((name, choices, pick))
    if not np.isfinite(best[slots]):
        raise ValueError("the size budget is smaller than the cheapest bit choice of every layer")
    chosen, c = {}, slots
    for name, choices, pick in reversed(picks):
        bits, (cost, _) = choices[pick[c]]
        chosen[name] = bits
        c -= int(np.ceil(cost / unit - 1e-9))
    return chosen
