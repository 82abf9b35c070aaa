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
from edgecnn.models.layer_select import matches, select_layers
from edgecnn.passes.share_alloc import allocate_bits, fisher_diagonal, index_cost_bytes

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
    # fisher: each weight counts in the k-means objective by its diagonal Fisher information on
    # the calibration images (edgecnn.passes.share_alloc), so centroids sit where moving a
    # weight costs most; needs calibration images.
    weighting: Literal["none", "fisher"] = "none"
    fisher_images: int = Field(256, ge=1, description="calibration images for the Fisher estimate")
    fisher_temperature: float = Field(1.0, gt=0, description="softmax temperature the Fisher labels are drawn at")
    # Per-layer bits chosen from these so that the summed Fisher-weighted error is least while
    # the estimated entropy-coded size stays within that of `bits` everywhere (layer_bits
    # overrides stay fixed). Needs calibration images; None: `bits` everywhere.
    bit_choices: Optional[list[int]] = None
    size_budget: float = Field(1.0, gt=0, le=4, description="bit_choices: the size budget as a multiple of `bits` everywhere")

    @field_validator("layer_bits")
    @classmethod
    def _bits_range(cls, value: dict[str, int]) -> dict[str, int]:
        for pattern, bits in value.items():
            if not 2 <= bits <= 8:
                raise ValueError(f"bits for '{pattern}' must be between 2 and 8, got {bits}")
        return value

    @field_validator("bit_choices")
    @classmethod
    def _choices_range(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is not None and (not value or any(not 2 <= b <= 8 for b in value)):
            raise ValueError(f"bit choices must be a non-empty list of bits between 2 and 8, got {value}")
        return sorted(set(value)) if value is not None else None


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


def kmeans_1d(
    values: np.ndarray, clusters: int, iterations: int = 40, init: str = "linear", weights: Optional[np.ndarray] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars with linear initialisation; returns (centroids, assignment).

    Hand-written because it is ten lines in 1-D: with sorted centroids, the nearest centroid
    is found by ``searchsorted`` on the midpoints, so an iteration is O(n log k).
    Empty clusters keep their previous centroid. ``weights`` (>= 0, one per value) make it
    minimise ``sum weights * (value - centroid)**2``: the nearest centroid is still the best
    assignment, each centroid becomes its members' weighted mean (plain mean where all
    members weigh 0).
    """
    values = np.asarray(values, np.float64)
    w = np.ones_like(values) if weights is None else np.asarray(weights, np.float64)
    if values.size == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    centroids = initial_centroids(values, clusters, init)
    assign = np.zeros(values.size, np.int64)
    for _ in range(iterations):
        assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        sums = np.bincount(assign, weights=values * w, minlength=clusters)
        mass = np.bincount(assign, weights=w, minlength=clusters)
        counts = np.bincount(assign, minlength=clusters)
        plain = np.bincount(assign, weights=values, minlength=clusters) / np.maximum(counts, 1)
        updated = np.where(mass > 0, sums / np.where(mass > 0, mass, 1), np.where(counts > 0, plain, centroids))
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
    for pattern, bits in config.layer_bits.items():
        if matches(name, [pattern]):
            return bits
    return config.bits


def cluster_weights(weight: torch.Tensor, bits: int, iterations: int = 40, init: str = "linear", importance=None):
    """(float32 centroids, assignment of the non-zeros, non-zero mask) of one weight tensor, unchanged."""
    flat = weight.detach().reshape(-1).cpu().numpy().astype(np.float32)
    nonzero = flat != 0
    w = None if importance is None else importance.detach().reshape(-1).cpu().numpy()[nonzero]
    centroids, assign = kmeans_1d(flat[nonzero], 1 << bits, iterations, init, w)
    centroids32 = centroids.astype(np.float32)
    if np.any(centroids32 == 0):  # a centroid rounding to 0 would turn weights into zeros
        centroids32[centroids32 == 0] = np.float32(np.finfo(np.float32).tiny)
    return centroids32, assign, nonzero


def share_layer(module: nn.Module, bits: int, iterations: int = 40, init: str = "linear", importance=None, clustered=None) -> dict:
    """Cluster one layer's non-zero weights in place; returns its report row.

    ``importance``: per-weight k-means weights (same shape as the weight), e.g. its Fisher
    diagonal; ``clustered``: a :func:`cluster_weights` result to apply instead of clustering again.
    """
    with torch.no_grad():
        weight = module.weight
        flat = weight.detach().reshape(-1).cpu().numpy().astype(np.float32)
        centroids32, assign, nonzero = clustered or cluster_weights(weight, bits, iterations, init, importance)
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
    row = {"nonzeros": int(nonzero.sum()), "distinct": int(len(np.unique(shared[nonzero]))), "bits": bits, "rms_error": error}
    if importance is not None:
        imp = importance.detach().reshape(-1).cpu().numpy().astype(np.float64)
        row["fisher_error"] = float((imp * (shared.astype(np.float64) - flat) ** 2).sum())
    return row


def _fisher(model: nn.Module, layers: list, config: WeightShareConfig, ctx: PassContext) -> Optional[dict]:
    if config.weighting == "none" and config.bit_choices is None:
        return None
    if ctx.calib_batches is None:
        raise UserError("weight_share with weighting 'fisher' or bit_choices needs calibration images; pass --calib DIR")
    try:
        return fisher_diagonal(model, layers, ctx.calib_batches, config.fisher_images, config.fisher_temperature)
    except ValueError as exc:
        raise UserError(f"weight_share: {exc}; give a folder with at least one image to --calib") from None


def _allocate(layers: list, config: WeightShareConfig, fisher: dict) -> tuple[dict, dict]:
    """Per-layer bits from ``bit_choices`` within the size of ``bits`` everywhere; (bits, clusterings)."""
    weighted = config.weighting == "fisher"
    options, clusterings, budget = {}, {}, 0.0
    for name, module in layers:
        fixed = _bits_for(name, config)
        pinned = any(matches(name, [p]) for p in config.layer_bits)
        choices = {fixed} if pinned else set(config.bit_choices) | {fixed}
        flat = module.weight.detach().reshape(-1).cpu().numpy().astype(np.float64)
        imp = fisher[name].reshape(-1).cpu().numpy().astype(np.float64)
        options[name] = {}
        for bits in sorted(choices):
            got = cluster_weights(module.weight, bits, config.iterations, config.init, fisher[name] if weighted else None)
            centroids, assign, nonzero = got
            distortion = float((imp[nonzero] * (centroids[assign] - flat[nonzero]) ** 2).sum())
            options[name][bits] = (index_cost_bytes(assign, len(centroids)), distortion)
            clusterings[(name, bits)] = got
        budget += options[name][fixed][0]
        if pinned:
            continue
        options[name] = {b: v for b, v in options[name].items() if b in config.bit_choices}
    try:
        chosen = allocate_bits(options, budget * config.size_budget)
    except ValueError as exc:
        raise UserError(f"weight_share: {exc}; raise size_budget or add smaller bit_choices") from None
    return chosen, clusterings


@register_pass("weight_share", config=WeightShareConfig, not_after=("quantize", "shift"))
def weight_share(model: nn.Module, config: WeightShareConfig, ctx: PassContext) -> nn.Module:
    """Share weights per layer: k-means over non-zero weights to 2**bits centroids (zeros stay)."""
    layers = select_layers(model, config.include, config.exclude)
    if not layers:
        raise UserError("weight_share selected no layers; check 'include'/'exclude'")
    fisher = _fisher(model, layers, config, ctx)
    bits_of = {name: _bits_for(name, config) for name, _ in layers}
    clusterings: dict = {}
    if config.bit_choices is not None:
        bits_of, clusterings = _allocate(layers, config, fisher)
    rows = []
    iterator = layers
    if ctx.progress:
        from rich.progress import track

        iterator = track(layers, description="weight sharing", transient=True)
    for name, module in iterator:
        bits = bits_of[name]
        importance = fisher[name] if fisher is not None else None
        kmeans_weights = importance if config.weighting == "fisher" else None
        got = clusterings.get((name, bits)) or cluster_weights(module.weight, bits, config.iterations, config.init, kmeans_weights)
        rows.append({"layer": name, **share_layer(module, bits, importance=importance, clustered=got)})
    total_nz = sum(r["nonzeros"] for r in rows)
    index_bits = sum(r["nonzeros"] * r["bits"] for r in rows)
    summary = {"layers": len(rows), "nonzeros": total_nz, "bits": config.bits, "index_bits_per_weight": index_bits / max(1, total_nz)}
    if fisher is not None:
        summary["fisher_error"] = sum(r["fisher_error"] for r in rows)
    ctx.report(PassReport("weight_share", rows=rows, summary=summary))
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
