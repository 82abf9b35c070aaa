"""Layer-wise reconstruction of pruned weights: refit the kept weights to the layer's old output.

Magnitude pruning zeroes the smallest weights and leaves the rest as they were, so the error
of each output channel is the dropped weights times their inputs. The kept weights can absorb
much of it: for one output channel with weights ``w`` and kept set ``K``, the kept weights
minimising ``||X w - X_K v||^2`` over the layer's inputs ``X`` solve
``H_KK v = H_K: w`` with ``H = X^T X`` (the layer-wise least-squares step of Optimal Brain
Surgeon and its one-shot descendants, e.g. SparseGPT; here exact per channel, the mask fixed
by magnitude). ``H`` is one Gram matrix per conv group over im2col columns, accumulated on a
few calibration images. A ridge term pulls the kept weights toward their old values where the
images do not determine them (a linear layer with more inputs than images).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.models.layer_select import visit_layer_inputs

DAMPING = 0.01  # ridge weight, relative to the mean of the Gram matrix's diagonal
SOLVE_ELEMENTS = 1 << 24  # float64 elements of one batch of per-channel systems


def layer_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs each output of ``module`` sees, as (groups, inputs per group, positions)."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(f"reconstruction handles zero-padded convs with numeric padding, not {module.padding_mode!r} / {module.padding!r}")
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        groups = module.groups
        per_group = cols.shape[1] // groups
        return cols.reshape(x.shape[0], groups, per_group, -1).permute(1, 2, 0, 3).reshape(groups, per_group, -1)
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T[None]
    raise TypeError(f"reconstruction handles Conv2d and Linear layers, not {type(module).__name__}")


def input_grams(model: nn.Module, layers: list[tuple[str, nn.Module]], batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer, the float64 Gram matrices (groups, D, D) of its inputs over ``batches`` (one forward pass each)."""
    grams: dict[str, torch.Tensor] = {}

    def collect(name: str, module: nn.Module, x: torch.Tensor) -> None:
        cols = layer_columns(module, x).double()
        gram = cols @ cols.transpose(1, 2)
        grams[name] = grams[name] + gram if name in grams else gram

    visit_layer_inputs(model, layers, batches, collect)
    return grams


@torch.no_grad()
def refit_kept(weight: torch.Tensor, keep: torch.Tensor, gram: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """``weight`` with the entries outside ``keep`` zero and the kept ones refit (module doc).

    ``gram``: (groups, D, D) from :func:`input_grams`; each output channel uses its group's.
    Returns a tensor of ``weight``'s shape and dtype; a channel that keeps nothing is all zero.
    """
    out = weight.shape[0]
    flat = weight.detach().reshape(out, -1).double()
    mask = keep.reshape(out, -1).to(torch.bool)
    groups, dim = gram.shape[0], gram.shape[1]
    if flat.shape[1] != dim or out % groups:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not match Gram matrices of shape {tuple(gram.shape)}")
    ridge = damping * torch.diagonal(gram, dim1=1, dim2=2).mean(1).clamp_min(1e-12)  # per group
    group_of = torch.arange(out) // (out // groups)
    result = torch.zeros_like(flat)
    chunk = max(1, SOLVE_ELEMENTS // (dim * dim))
    for start in range(0, out, chunk):
        rows = slice(start, min(out, start + chunk))
        h, m, w = gram[group_of[rows]], mask[rows].double(), flat[rows]
        lam = ridge[group_of[rows]].view(-1, 1)
        both = m[:, :, None] * m[:, None, :]
        # rows and columns of dropped weights become identity rows with a zero right-hand side
        a = h * both + torch.diag_embed(lam * m + (1 - m))
        b = m * ((h @ w[:, :, None]).squeeze(2) + lam * w)
        # symmetric positive definite by construction: Cholesky (batched LU of torch's MKL build
        # also fails on some of these systems with two threads, calling them singular)
        result[rows] = torch.cholesky_solve(b[:, :, None], torch.linalg.cholesky(a)).squeeze(2) * m
    return result.reshape(weight.shape).to(weight.dtype)


def output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """Summed squared output error ``||X (w - v)||^2`` of ``approx`` for ``weight`` over the Gram's images."""
    out = weight.shape[0]
    diff = (weight.detach().double() - approx.detach().double()).reshape(out, -1)
    group_of = torch.arange(out) // (out // gram.shape[0])
    return float(torch.einsum("od,ode,oe->", diff, gram[group_of], diff))
