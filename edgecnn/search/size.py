"""The size objective: the smallest shipped ``.ecnn`` whose top-1 drop stays within a budget.

The shipped file stores each conv / linear weight as a codebook of at most ``2**bits`` shared
values and entropy-coded indices (:mod:`edgecnn.pack`), so the bits can differ per layer and
what a layer costs is its coded index stream, not its parameter count. Per-layer choice pays
here (unlike latency on a CPU whose int8 kernels do not care about 6 vs 7 bits): a layer whose
weights barely move the output can take 3 bits while a sensitive one keeps 8.

Method: every layer is scored at every bit width (and, with recovery images, every kept-weight
density of magnitude pruning, its kept weights refit to the layer's old output on other search
images: :mod:`edgecnn.passes.reconstruct`) by *measuring* what sharing that layer alone does to the output:
the KL divergence from the FP32 model's class distribution on the sensitivity images (as the
latency search measures its pruning and shift units). A diagonal Fisher estimate in weight
space prices each weight's error separately and misses errors that add up inside one kernel: a depthwise 3x3
whose nine weights sum to nearly zero (an edge filter) turns a small per-weight error into a
large response to its input's mean (MobileNetV2's first depthwise conv, 288 weights, is the
layer that moves the output most when shared alone at low widths). The weight_share pass's
knapsack (:func:`allocate_bits`) then gives the least damaging choice for a byte budget,
summing the scores. The budget is bisected on the top-1 drop *measured* on the search part of the
labelled images: the smallest budget whose measured drop is within ``max_drop`` wins. Uniform
bit widths are measured the same way, and the final answer is the feasible artifact with the
fewest shipped bytes (packed for real, not estimated). The evaluation part is never seen here.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from edgecnn.models.layer_select import layer_kind, select_layers
from edgecnn.passes.reconstruct import input_grams, refit_kept
from edgecnn.passes.share_alloc import CODEBOOK_ENTRY_BYTES, allocate_bits
from edgecnn.passes.weight_share import cluster_weights, share_layer, tie_to_centroids
from edgecnn.search.budget import Budget

Choice = tuple[int, float]  # (bits, kept-weight density) of one layer
KL_CEILING = 2.0  # nats: a layer whose sharing alone moves the output this far is not tried at fewer bits
CHANNEL_SPREAD = 1.0  # a conv whose output channels' largest |weight| differ more than this is stored channel-scaled


class ChannelScaled(nn.Module):
    """A conv stored as weights divided by a per-output-channel scale, the scale applied after it.

    Folding BatchNorm multiplies each output channel by its own factor: in MobileNetV2 the
    largest weight of one depthwise channel is 0.08 and of another 56. One codebook per tensor
    then maps whole small channels to a single value and the network collapses (top-1 near 0
    at 8 bit). Scaled back to a common range, the channels share the codebook; the scales cost
    4 bytes per channel (the same layout per-channel int8 quantization uses). Every conv whose
    channels differ at all is scaled: a channel at an eighth of the largest range otherwise
    loses three of its bits.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach()
        scale = weight.reshape(weight.shape[0], -1).abs().amax(1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.conv = copy.deepcopy(conv)
        self.conv.bias = None
        with torch.no_grad():
            self.conv.weight.copy_(weight / scale.view(-1, *([1] * (weight.dim() - 1))))
        self.register_buffer("scale", scale.view(1, -1, 1, 1).clone())
        self.register_buffer("shift", (conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)).view(1, -1, 1, 1).clone())

    def forward(self, x):
        return self.conv(x) * self.scale + self.shift


def channel_spread(weight: torch.Tensor) -> float:
    """Largest over smallest per-output-channel max |weight| (channels that are all zero left out)."""
    peaks = weight.detach().reshape(weight.shape[0], -1).abs().amax(1)
    peaks = peaks[peaks > 0]
    return float(peaks.max() / peaks.min()) if peaks.numel() else 1.0


def scale_channels(model: nn.Module, spread: float = CHANNEL_SPREAD) -> list[str]:
    """Wrap (in place) every conv whose :func:`channel_spread` exceeds ``spread`` in :class:`ChannelScaled`; returns their names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and channel_spread(module.weight) > spread:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, ChannelScaled(module))
            wrapped.append(name)
    return wrapped


@dataclass
class SizeCandidate:
    label: str
    choice: dict[str, Choice]
    estimated_bytes: float
    drop: Optional[float] = None  # top-1 points below FP32 on the search part
    agree: Optional[float] = None  # % of search images on FP32's class
    feasible: Optional[bool] = None
    shipped_bytes: Optional[int] = None
    correct: Optional[np.ndarray] = field(default=None, repr=False)  # per search image
    model: Optional[nn.Module] = field(default=None, repr=False)  # the shared (and pruned) model

    def to_dict(self) -> dict:
        bits = [b for b, _ in self.choice.values()]
        return {"label": self.label, "estimated_bytes": round(self.estimated_bytes), "shipped_bytes": self.shipped_bytes,
                "drop": self.drop, "agree": self.agree, "feasible": self.feasible,
                "bits": {str(b): bits.count(b) for b in sorted(set(bits))},
                "pruned_layers": sum(1 for _, d in self.choice.values() if d < 1)}


@dataclass
class SizeOutcome:
    fp32_top1: float  # on the search part
    uniform: list[SizeCandidate]
    searched: list[SizeCandidate]
    chosen: Optional[SizeCandidate]
    chosen_model: Optional[nn.Module]
    layers: list[dict]  # per-layer rows of the chosen configuration
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def coded_bytes(assign: np.ndarray, clusters: int, zeros: int = 0) -> float:
    """Estimated shipped bytes of one layer: order-0 entropy of its index stream (zeros as one
    more symbol) plus the codebook. The packer codes runs of zeros, so pruned layers cost less
    than this; the final choice is made on packed bytes."""
    counts = np.bincount(assign, minlength=clusters).astype(np.float64)
    used = int((counts > 0).sum())
    counts = np.append(counts[counts > 0], zeros)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum() / 8 + CODEBOOK_ENTRY_BYTES * used)


def magnitude_mask(weight: torch.Tensor, density: float) -> np.ndarray:
    """Flat boolean mask keeping the ``density`` fraction of weights largest in magnitude."""
    flat = np.abs(weight.detach().reshape(-1).cpu().numpy())
    keep = max(1, int(round(density * flat.size)))
    if keep >= flat.size:
        return np.ones(flat.size, bool)
    threshold = np.partition(flat, flat.size - keep)[flat.size - keep]
    return flat >= threshold


@torch.no_grad()
def measured_options(model: nn.Module, layers: list, images: torch.Tensor, bit_choices: list[int], densities: list[float],
                     iterations: int = 30, batch: int = 32, log=None, budget: Optional[Budget] = None,
                     grams: Optional[dict] = None):
    """Per layer and (bits, density): (estimated bytes, output KL from FP32 with that layer alone
    shared) and the clustering. Each layer's weight is swapped in place and put back. With
    ``grams`` (:func:`edgecnn.passes.reconstruct.input_grams`), a pruned layer's kept weights are
    refit to its old output before they are shared (:func:`edgecnn.passes.reconstruct.refit_kept`).

    Scored in rounds, one width at a time for every layer (widest first, then each pruning
    density), so that a time ``budget`` stops between layers with every layer scored at the
    widest width (that round always completes: without it there is no choice to make) and each
    layer keeping the widths it was scored at. Once a layer's KL passes ``KL_CEILING`` its
    narrower widths are not options (they would only be chosen by a budget no artifact within
    a point meets)."""
    from edgecnn.search.sensitivity import forward_logits, score

    reference = forward_logits(model, images, batch)
    options: dict[str, dict[Choice, tuple[float, float]]] = {name: {} for name, _ in layers}
    clusterings: dict = {}
    originals = {name: module.weight.detach().clone() for name, module in layers}
    over_ceiling: set[tuple[str, float]] = set()
    rounds = [(density, bits) for density in densities for bits in sorted(bit_choices, reverse=True)]
    label = lambda bits, density: f"{bits} bit" + (f" at density {density:g}" if density < 1 else "")  # noqa: E731
    for number, (density, bits) in enumerate(rounds):
        width = label(bits, density)
        if budget is not None:
            budget.phase = f"scoring {len(layers)} layers at {width}"
        for index, (name, module) in enumerate(layers):
            if number and budget is not None and budget.spent():
                left = [label(b, d) for d, b in rounds[number + 1:]]
                budget.skip(f"layer scores at {width} ({index} of {len(layers)} layers scored)"
                            + (f" and at {', '.join(left)}" if left else ""))
                return options, clusterings
            if (name, density) in over_ceiling:
                continue
            weight = originals[name]
            flat = weight.reshape(-1).cpu().numpy()
            masked = weight
            if density < 1:
                keep = torch.from_numpy(magnitude_mask(weight, density)).reshape(weight.shape)
                masked = refit_kept(weight, keep, grams[name]) if grams is not None else weight * keep
            centroids, assign, nonzero = cluster_weights(masked, bits, iterations)
            shared = np.zeros(flat.size, np.float32)
            shared[nonzero] = centroids[assign]
            module.weight.copy_(torch.from_numpy(shared).reshape(weight.shape))
            kl = score(forward_logits(model, images, batch), reference).kl
            module.weight.copy_(weight)
            options[name][(bits, density)] = (coded_bytes(assign, len(centroids), int((~nonzero).sum())), kl)
            clusterings[(name, bits, density)] = (centroids, assign, nonzero)
            if kl > KL_CEILING:
                over_ceiling.add((name, density))
        if log is not None and number + 1 < len(rounds):
            log(f"  size: scored {len(layers)} layers at {width} ({number + 1} of {len(rounds)} widths)")
    return options, clusterings


def apply_choice(model: nn.Module, choice: dict[str, Choice], clusterings: dict) -> nn.Module:
    """A copy of ``model`` with each chosen layer pruned and shared as chosen (tied weights)."""
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name, (bits, density) in choice.items():
        share_layer(modules[name], bits, clustered=clusterings[(name, bits, density)])
    return out


@torch.no_grad()
def predictions(model: nn.Module, images: np.ndarray, batch: int = 50) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(images[i:i + batch])).argmax(1).numpy() for i in range(0, len(images), batch)])


def drop_upper_bound(base_correct: np.ndarray, cand_correct: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(drop in points, one-sided upper bound) from per-image paired differences (normal approximation)."""
    from statistics import NormalDist

    diff = base_correct.astype(np.float64) - cand_correct.astype(np.float64)
    n = diff.size
    mean = float(diff.mean() * 100)
    se = float(diff.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else float("inf")
    return mean, mean + NormalDist().inv_cdf(confidence) * se


def shipped_bytes(model: nn.Module, path: Path, size: int) -> int:
    """Bytes of the .ecnn the model ships as (FP32 ONNX with shared weights, packed)."""
    from edgecnn.pack import shipped_size
    from edgecnn.search.run import export

    return shipped_size(export(model, path, size, "ort-x86"))


def size_search(module: nn.Module, images: np.ndarray, labels: np.ndarray, config, work: Path,
                recovery: Optional[Callable] = None, log=print, budget: Optional[Budget] = None) -> SizeOutcome:
    """The smallest shipped artifact within ``config.max_drop`` points on ``images`` (the search part).

    ``config``: a SearchConfig (fields max_drop, bit_choices, prune_densities, sensitivity_images,
    max_verify, search_time, recovery_steps). Layers may also be magnitude-pruned to each of
    ``prune_densities`` (the search stage empties it when no recovery images are given);
    ``recovery(student, steps)``, when given, trains every candidate back (weights stay tied to
    their centroids, pruned weights stay zero) before its drop is measured: the uniform widths get
    the same training as the per-layer choices, so a per-layer answer that wins does not win by
    training alone. ``budget`` (default:
    ``config.search_time`` from now) is checked between layer scores, uniform widths and
    candidates; what it leaves out is in ``budget.skipped``.
    """
    budget = budget or Budget(config.search_time)
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    base = copy.deepcopy(module).eval()
    scaled = scale_channels(base)
    layers = select_layers(base)
    size = images.shape[-1]
    fp32_pred = predictions(base, images)
    fp32_correct = fp32_pred == labels
    fp32_top1 = float(fp32_correct.mean() * 100)
    step = max(1, len(images) // config.sensitivity_images)
    sensitivity_set = torch.from_numpy(images[::step][:config.sensitivity_images])
    densities = [1.0] + sorted(config.prune_densities, reverse=True)
    grams = None
    if len(densities) > 1:  # pruned options are refit on other search images than they are scored on (where there are enough)
        refit_set = torch.from_numpy(images[step // 2::step][:config.sensitivity_images])
        grams = input_grams(base, layers, torch.split(refit_set, 16))
        log(f"  size: input statistics of {len(layers)} layers on {len(refit_set)} images, to refit pruned layers")
    options, clusterings = measured_options(base, layers, sensitivity_set, list(config.bit_choices), densities, log=log,
                                            budget=budget, grams=grams)
    seconds = {"sensitivity": time.perf_counter() - started}
    log(f"  size: {len(layers)} layers scored at {len(config.bit_choices)} bit widths x {len(densities)} densities "
        f"({seconds['sensitivity']:.0f} s)")

    def measure(label: str, choice: dict[str, Choice]) -> SizeCandidate:
        model = apply_choice(base, choice, clusterings)
        if recovery is not None:  # every candidate, uniform widths too: what differs between them is the choice
            trained = recovery(model, config.recovery_steps)
            tie_to_centroids(model)
            log(f"  recovery of {label}: {trained}")
        pred = predictions(model, images)
        cand = SizeCandidate(label, choice, sum(options[n][c][0] for n, c in choice.items()))
        cand.correct = pred == labels
        cand.drop = fp32_top1 - float(cand.correct.mean() * 100)
        cand.agree = float((pred == fp32_pred).mean() * 100)
        cand.feasible = cand.drop <= config.max_drop
        log(f"  {label}: ~{cand.estimated_bytes / 1e3:.0f} kB, drop {cand.drop:.2f} points"
            f" ({'kept' if cand.feasible else 'over the budget'})")
        cand.model = model
        return cand

    notes: list[str] = []
    uniform = measure_uniform([name for name, _ in layers], options, clusterings, config, budget, measure, notes, log)
    seconds["uniform"] = time.perf_counter() - started - seconds["sensitivity"]

    budget.phase = "bisecting the per-layer byte budget"
    searched = bisect_budget(options, measure, [c for c in uniform if c.feasible], config, budget)
    seconds["search"] = time.perf_counter() - started - seconds["sensitivity"] - seconds["uniform"]

    feasible = [c for c in uniform + searched if c.feasible]
    pack_finalists(feasible, uniform, work, size)
    sized = [c for c in feasible if c.shipped_bytes is not None]
    chosen = min(sized, key=lambda c: (c.shipped_bytes, c.drop)) if sized else None
    seconds["ship"] = time.perf_counter() - started - sum(seconds.values())
    rows = []
    if chosen is not None:
        modules = dict(base.named_modules())
        for name, (bits, density) in chosen.choice.items():
            rows.append({"layer": name, "kind": layer_kind(modules[name]), "bits": bits, "density": density,
                         "params": modules[name].weight.numel(), "estimated_bytes": round(options[name][(bits, density)][0])})
    notes += [f"{len(scaled)} conv layers stored channel-scaled (their channels' weight ranges differ, e.g. after BN "
             f"folding): {', '.join(scaled[:4])}{', ...' if len(scaled) > 4 else ''}"] if scaled else []
    return SizeOutcome(fp32_top1, uniform, searched, chosen, chosen.model if chosen else None, rows, seconds, notes)


def measure_uniform(names: list[str], options: dict, clusterings: dict, config, budget: Budget, measure: Callable,
                    notes: list[str], log) -> list[SizeCandidate]:
    """Uniform widths from the widest down, stopping at the first over the budget (fewer bits lose
    more), at one a layer's KL ceiling rules out, or where the time budget left layers unscored."""
    uniform: list[SizeCandidate] = []
    for bits in sorted(config.bit_choices, reverse=True):
        unscored = [name for name in names if (name, bits, 1.0) not in clusterings]
        over = [name for name in unscored if any(o[1] > KL_CEILING for o in options[name].values())]
        if over:
            notes.append(f"uniform {bits} bit not measured: {over[0]}{' and others' if len(over) > 1 else ''} "
                         f"alone already moved the output more than {KL_CEILING:g} nats (KL) at a wider width")
            log(f"  {notes[-1]}")
            break
        if unscored or (uniform and budget.spent()):
            budget.skip(f"uniform {bits} bit and narrower")
            break
        budget.phase = f"measuring uniform {bits} bit"
        cand = measure(f"uniform {bits} bit", {name: (bits, 1.0) for name in names})
        uniform.append(cand)
        if not cand.feasible:
            break
    return uniform


def bisect_budget(options: dict, measure: Callable, feasible_uniform: list, config, time_budget: Budget) -> list[SizeCandidate]:
    """Per-layer candidates: the first at the smallest feasible uniform size, then the byte budget
    bisected (geometrically) below it on the measured drop."""
    searched: list[SizeCandidate] = []
    high = min((c.estimated_bytes for c in feasible_uniform), default=sum(max(o.values())[0] for o in options.values()))
    low = sum(min(v[0] for v in o.values()) for o in options.values())
    for probe in range(config.max_verify):
        if time_budget.spent():
            time_budget.skip(f"the rest of the per-layer budget bisection (stopped after {probe} of at most {config.max_verify} candidates)")
            break
        if searched and (high / low < 1.02 or not any(c.feasible for c in searched)):
            break
        budget = math.sqrt(low * high) if searched else high
        try:
            choice = allocate_bits(options, budget)
        except ValueError:
            low = budget
            continue
        cand = measure(f"per-layer, budget {budget / 1e3:.0f} kB", choice)
        searched.append(cand)
        if cand.feasible:
            high = budget
        else:
            low = budget
    return searched


def pack_finalists(feasible: list[SizeCandidate], uniform: list[SizeCandidate], work: Path, size: int) -> None:
    """Packing is slow on large models: the two smallest feasible by estimate (the estimate ranks
    within a few %) and the smallest feasible uniform width are packed for real."""
    to_pack = sorted(feasible, key=lambda c: c.estimated_bytes)[:2]
    to_pack += [c for c in sorted((c for c in feasible if c in uniform), key=lambda c: c.estimated_bytes)[:1] if c not in to_pack]
    for i, cand in enumerate(to_pack):
        cand.shipped_bytes = shipped_bytes(cand.model, work / f"candidate-{i}.onnx", size)


def summary(outcome: SizeOutcome, max_drop: float) -> dict:
    """report.json ``search`` section of a size search."""
    chosen = outcome.chosen
    return {
        "objective": "size", "max_drop": max_drop, "fp32_top1_search_part": outcome.fp32_top1,
        "chosen": chosen.to_dict() if chosen else None,
        "uniform": [c.to_dict() for c in outcome.uniform],
        "verified": [c.to_dict() for c in outcome.searched],
        "chosen_layers": outcome.layers,
        "seconds": {k: round(v, 1) for k, v in outcome.seconds.items()},
    }
