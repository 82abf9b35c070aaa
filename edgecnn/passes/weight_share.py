"""Weight sharing (Deep Compression, Han et al. 2016): per-layer k-means over the non-zero weights.

Each selected conv/linear layer keeps at most ``2**bits`` distinct non-zero weight values
(centroids); pruned zeros stay exactly zero. Centroids start evenly spaced between the
layer's min and max (linear initialisation: it keeps the rare large weights, which matter
most, as the paper shows), then 1-D Lloyd iterations run on the sorted values.

The cluster assignment is remembered on the module (not in its state dict, so checkpoints
and ONNX export are unchanged). Fine-tuning keeps weights tied to centroids: call
:func:`tie_to_centroids` after every optimizer step (shared layers also re-tie themselves
before each forward, so loops that do not know about sharing work too); each centroid moves
by the mean update of its weights (the per-centroid gradient sum of the paper, up to the
learning rate scale). Call :func:`tie_to_centroids` once after training, before export.
The shared model exports as ordinary float weights with few distinct values, which
``edgecnn pack`` turns into codebooks and entropy-coded indices.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field, field_validator

from edgecnn.errors import UserError
from edgecnn.passes.registry import PassConfig, PassContext, PassReport, register_pass
from edgecnn.models.layer_select import select_layers

SHARE_ATTR = "_edgecnn_weight_share"  # module attribute holding the WeightShareState


class WeightShareConfig(PassConfig):
    """bits: 2..8 (2**bits centroids per layer); per-layer overrides by glob, e.g. {"classifier.*": 5}."""

    bits: int = Field(6, ge=2, le=8)
    include: Optional[list[str]] = None
    exclude: Optional[list[str]] = None
    layer_bits: dict[str, int] = Field(default_factory=dict)
    iterations: int = Field(40, ge=1, le=1000)
    # linear: evenly between min and max (Deep Compression). linear_nonzero: evenly over the two
    # intervals that hold non-zero weights ([min, largest negative], [smallest positive, max]),
    # so no centroid starts in the gap pruning left around zero, where it would stay unused.
    init: Literal["linear", "linear_nonzero"] = "linear"

    @field_validator("layer_bits")
    @classmethod
    def _bits_range(cls, value: dict[str, int]) -> dict[str, int]:
        for pattern, bits in value.items():
            if not 2 <= bits <= 8:
                raise ValueError(f"bits for '{pattern}' must be between 2 and 8, got {bits}")
        return value


class WeightShareState:
    """Cluster index per weight (-1 = zero / pruned) and the centroid table of one layer."""

    def __init__(self, index: torch.Tensor, centroids: torch.Tensor, bits: int):
        self.index = index
        self.centroids = centroids
        self.bits = bits
        self.version = -1  # weight._version when the weights were last tied


def _tie_before_forward(module: nn.Module, inputs) -> None:
    """Forward pre-hook: re-tie the weights if an optimizer changed them since the last tie.

    This lets any training loop (edgecnn.train, a user's own) fine-tune centroids without
    knowing about sharing. Skipped while tracing/exporting so no tie op enters the graph.
    """
    state = getattr(module, SHARE_ATTR, None)
    if state is None or module.weight._version == state.version:
        return
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    _tie_module(module, state)


def initial_centroids(values: np.ndarray, clusters: int, init: str = "linear") -> np.ndarray:
    neg, pos = values[values < 0], values[values > 0]
    if init == "linear" or neg.size == 0 or pos.size == 0 or clusters < 2:
        return np.linspace(values.min(), values.max(), clusters)
    span_neg, span_pos = neg.max() - neg.min(), pos.max() - pos.min()
    k_neg = int(np.clip(round(clusters * span_neg / max(span_neg + span_pos, 1e-30)), 1, clusters - 1))
    return np.concatenate([np.linspace(neg.min(), neg.max(), k_neg), np.linspace(pos.min(), pos.max(), clusters - k_neg)])


def kmeans_1d(values: np.ndarray, clusters: int, iterations: int = 40, init: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars with linear initialisation; returns (centroids, assignment).

    Hand-written because it is ten lines in 1-D: with sorted centroids, the nearest centroid
    is found by ``searchsorted`` on the midpoints, so an iteration is O(n log k).
    Empty clusters keep their previous centroid.
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    centroids = initial_centroids(values, clusters, init)
    assign = np.zeros(values.size, np.int64)
    for _ in range(iterations):
        assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        sums = np.bincount(assign, weights=values, minlength=clusters)
        counts = np.bincount(assign, minlength=clusters)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            centroids = updated
            break
        centroids = np.sort(updated)
    assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    used = np.unique(assign)  # drop unused centroids so indices stay dense
    remap = np.full(clusters, -1, np.int64)
    remap[used] = np.arange(used.size)
    return centroids[used], remap[assign]


def _bits_for(name: str, config: WeightShareConfig) -> int:
    from edgecnn.models.layer_select import matches

    for pattern, bits in config.layer_bits.items():
        if matches(name, [pattern]):
            return bits
    return config.bits


def share_layer(module: nn.Module, bits: int, iterations: int = 40, init: str = "linear") -> dict:
    """Cluster one layer's non-zero weights in place; returns its report row."""
    with torch.no_grad():
        weight = module.weight
        flat = weight.detach().reshape(-1).cpu().numpy().astype(np.float32)
        nonzero = flat != 0
        centroids, assign = kmeans_1d(flat[nonzero], 1 << bits, iterations, init)
        centroids32 = centroids.astype(np.float32)
        if np.any(centroids32 == 0):  # a centroid rounding to 0 would turn weights into zeros
            centroids32[centroids32 == 0] = np.float32(np.finfo(np.float32).tiny)
        index = np.full(flat.size, -1, np.int64)
        index[nonzero] = assign
        shared = np.zeros_like(flat)
        shared[nonzero] = centroids32[assign]
        weight.copy_(torch.from_numpy(shared).reshape(weight.shape).to(weight.dtype))
        error = float(np.sqrt(np.mean((shared - flat) ** 2))) if flat.size else 0.0
    state = WeightShareState(torch.from_numpy(index).reshape(weight.shape), torch.from_numpy(centroids32), bits)
    state.version = module.weight._version
    if getattr(module, SHARE_ATTR, None) is None:
        module.register_forward_pre_hook(_tie_before_forward)
    setattr(module, SHARE_ATTR, state)
    return {
        "nonzeros": int(nonzero.sum()),
        "distinct": int(len(np.unique(shared[nonzero]))),
        "bits": bits,
        "rms_error": error,
    }


@register_pass("weight_share", config=WeightShareConfig, not_after=("quantize", "shift"))
def weight_share(model: nn.Module, config: WeightShareConfig, ctx: PassContext) -> nn.Module:
    """Share weights per layer: k-means over non-zero weights to 2**bits centroids (zeros stay)."""
    layers = select_layers(model, config.include, config.exclude)
    if not layers:
        raise UserError("weight_share selected no layers; check 'include'/'exclude'")
    rows = []
    iterator = layers
    if ctx.progress:
        from rich.progress import track

        iterator = track(layers, description="weight sharing", transient=True)
    for name, module in iterator:
        row = {"layer": name, **share_layer(module, _bits_for(name, config), config.iterations, config.init)}
        rows.append(row)
    total_nz = sum(r["nonzeros"] for r in rows)
    index_bits = sum(r["nonzeros"] * r["bits"] for r in rows)
    ctx.report(
        PassReport(
            "weight_share",
            rows=rows,
            summary={
                "layers": len(rows),
                "nonzeros": total_nz,
                "bits": config.bits,
                "index_bits_per_weight": index_bits / max(1, total_nz),
            },
        )
    )
    return model


def shared_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if getattr(m, SHARE_ATTR, None) is not None]


def tie_to_centroids(model: nn.Module) -> None:
    """Re-tie shared weights after an optimizer step (a no-op for a model without sharing).

    Each centroid becomes the mean of its weights after the step, i.e. the old centroid plus
    the mean per-weight update; weights are then reset to their centroid and zeros to zero.
    Cluster assignments never change, so the layer keeps <= 2**bits distinct values.
    Shared layers also re-tie themselves before each forward (a pre-hook), so a training
    loop that does not call this still trains tied centroids; call it once after training,
    before export, so the last step is tied too.
    """
    for _, module in shared_layers(model):
        _tie_module(module, getattr(module, SHARE_ATTR))


@torch.no_grad()
def _tie_module(module: nn.Module, state: WeightShareState) -> None:
    weight = module.weight
    index = state.index.to(weight.device)
    member = index >= 0
    k = state.centroids.numel()
    flat_idx = index[member]
    sums = torch.zeros(k, dtype=torch.float64, device=weight.device)
    sums.index_add_(0, flat_idx, weight[member].double())
    counts = torch.bincount(flat_idx, minlength=k).clamp_min(1)
    centroids = (sums / counts).float()
    centroids[centroids == 0] = torch.finfo(torch.float32).tiny
    state.centroids = centroids.cpu()
    tied = torch.zeros_like(weight)
    tied[member] = centroids[flat_idx].to(weight.dtype)
    weight.copy_(tied)
    state.version = weight._version


def centroid_gradient_hook(model: nn.Module) -> list:
    """Optional: make each weight's gradient the mean gradient of its cluster (zeros get none).

    With plain SGD this is exactly the paper's centroid update; call once before training;
    returns the hook handles (``h.remove()`` to undo). :func:`tie_to_centroids` after each
    step is still needed with adaptive optimizers (Adam moves tied weights differently).
    """
    handles = []
    for _, module in shared_layers(model):
        state: WeightShareState = getattr(module, SHARE_ATTR)

        def hook(grad, state=state):
            index = state.index.to(grad.device)
            member = index >= 0
            k = state.centroids.numel()
            sums = torch.zeros(k, dtype=grad.dtype, device=grad.device).index_add_(0, index[member], grad[member])
            counts = torch.bincount(index[member], minlength=k).clamp_min(1).to(grad.dtype)
            out = torch.zeros_like(grad)
            out[member] = (sums / counts)[index[member]]
            return out

        handles.append(module.weight.register_hook(hook))
    return handles
