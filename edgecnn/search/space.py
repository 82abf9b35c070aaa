"""The search space: one *unit* per decision, each with a few options.

* ``q:<layer>`` precision of one conv/linear: ``fp32`` (float fallback), ``w8a8``, ``w7a8``,
  ``w6a8`` (8-bit activations; 7/6-bit weights put ORT x86 on its U8S8 kernels). Depthwise
  convs get ``fp32``/``w8a8`` only: their weights stay 8-bit on ort-x86 anyway.
* ``p:<root>`` kept channel fraction of one prunable group (the channels coupled through
  residual adds, concats and depthwise convs, found by the ``channel_prune`` pass's own
  dependency handling, counts rounded to ``round_to``), e.g. ``1.0``, ``0.75``, ``0.5``.
* ``s:<layer>`` shift substitution of one spatial conv (depthwise k x k, or a full k x k
  conv such as a Fire module's expand3x3): ``False`` / ``True``.

A *configuration* maps unit names to options; :func:`apply_config` builds it (prune ->
shift -> quantize), so any configuration is a real model that exports and runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.targets import DEFAULT_TARGET

PRECISIONS = ("fp32", "w8a8", "w7a8", "w6a8")
BITS = {"fp32": None, "w8a8": 8, "w7a8": 7, "w6a8": 6}


@dataclass(frozen=True)
class Unit:
    """One decision: its name, kind (precision / prune / shift), options (first = unchanged)."""

    name: str
    kind: str
    options: tuple
    layer: str = ""  # the conv/linear it is about (precision, shift) or the group root (prune)
    # prune: option -> {layer: (input kept fraction, output kept fraction)} from a probe
    effect: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Space:
    units: list[Unit]
    layers: list[str]  # conv/linear names in forward order
    layer_kinds: dict[str, str]
    layer_macs: dict[str, int]

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    def base(self) -> dict[str, Any]:
        """Every unit at its first option: the FP32 model unchanged."""
        return {u.name: u.options[0] for u in self.units}

    def uniform(self, precision: str) -> dict[str, Any]:
        """Every layer at ``precision`` where it is an option (else its closest: w8a8), nothing pruned."""
        config = self.base()
        for u in self.units:
            if u.kind == "precision":
                config[u.name] = precision if precision in u.options else ("w8a8" if precision != "fp32" else "fp32")
        return config

    def precision_of(self, config: dict, layer: str) -> str:
        return config.get(f"q:{layer}", "fp32")

    def channel_factors(self, config: dict, layer: str) -> tuple[float, float]:
        """(input, output) kept fractions of ``layer`` under the pruning choices of ``config``."""
        fin = fout = 1.0
        for u in self.units:
            if u.kind != "prune":
                continue
            option = config.get(u.name, 1.0)
            if option == u.options[0]:
                continue
            cin, cout = u.effect.get(option, {}).get(layer, (1.0, 1.0))
            fin, fout = fin * cin, fout * cout
        return fin, fout

    def shifted(self, config: dict, layer: str) -> bool:
        return bool(config.get(f"s:{layer}", False))

    def describe(self, config: dict) -> list[dict]:
        """One row per layer: its precision, kept channels and shift choice (report table)."""
        rows = []
        for layer in self.layers:
            fin, fout = self.channel_factors(config, layer)
            rows.append({"layer": layer, "kind": self.layer_kinds[layer], "precision": self.precision_of(config, layer),
                         "in_kept": round(fin, 3), "out_kept": round(fout, 3), "shift": self.shifted(config, layer)})
        return rows


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from edgecnn.models.layer_select import layer_kind

    return [(n, m) for n, m in model.named_modules() if layer_kind(m) is not None]


def _kind(module: nn.Module) -> str:
    from edgecnn.models.layer_select import layer_kind

    return layer_kind(module)


def _probe_group(model: nn.Module, root: str, density: float, example: torch.Tensor, round_to: int) -> dict:
    """Prune only the group rooted at ``root`` on a copy; {layer: (in kept, out kept)} that changed."""
    from edgecnn.passes.channel_prune import ChannelPruneConfig, channel_prune_model

    config = ChannelPruneConfig(density=1.0, overrides={root: density}, round_to=round_to)
    _, rows, _ = channel_prune_model(copy.deepcopy(model), config, example)
    return {r["layer"]: (r["in_after"] / r["in_before"], r["out_after"] / r["out_before"]) for r in rows
            if (r["in_after"], r["out_after"]) != (r["in_before"], r["out_before"])}


def prune_units(model: nn.Module, example: torch.Tensor, densities: tuple, round_to: int = 8) -> list[Unit]:
    """One unit per prunable group: each 1x1/full conv is tried as a group root alone; a root
    whose probe changes nothing (frozen, output layer) or repeats a found group is skipped."""
    units, seen = [], []
    for name, module in _layers(model):
        if _kind(module) not in ("pointwise", "conv") or module.in_channels <= 4:
            continue
        effect = {d: _probe_group(model, name, d, example, round_to) for d in densities}
        touched = frozenset(k for e in effect.values() for k in e)
        if not touched or touched in seen:
            continue
        seen.append(touched)
        units.append(Unit(f"p:{name}", "prune", (1.0, *densities), name, effect))
    return units


def shift_units(model: nn.Module) -> list[Unit]:
    """Spatial convs the shift pass can replace (not the input conv)."""
    units = []
    for name, module in _layers(model):
        kind = _kind(module)
        if kind in ("depthwise", "conv") and module.kernel_size[0] > 1 and module.in_channels > 4 and module.groups in (1, module.in_channels):
            units.append(Unit(f"s:{name}", "shift", (False, True), name))
    return units


def build_space(model: nn.Module, example: torch.Tensor, precisions=PRECISIONS, prune_densities: tuple = (),
                shift: bool = False, round_to: int = 8) -> Space:
    """The units of ``model``: precision per layer, and (optionally) pruning and shift."""
    from edgecnn.passes.channel_prune import count_macs

    layers = _layers(model)
    if not layers:
        raise UserError("the model has no conv or linear layer to search over")
    units = []
    for name, module in layers:
        options = tuple(p for p in precisions if p in ("fp32", "w8a8") or _kind(module) != "depthwise")
        if "fp32" not in options:
            options = ("fp32", *options)
        units.append(Unit(f"q:{name}", "precision", options, name))
    if prune_densities:
        units += prune_units(model, example, tuple(sorted(prune_densities, reverse=True)), round_to)
    if shift:
        units += shift_units(model)
    macs = count_macs(model, tuple(example.shape[-2:]))
    return Space(units, [n for n, _ in layers], {n: _kind(m) for n, m in layers}, macs)


# ---------------------------------------------------------------------------- building


def quantize_per_layer(model: nn.Module, bits: dict[str, int], calib_batches: list, target: str = DEFAULT_TARGET) -> nn.Module:
    """Quantize the layers in ``bits`` (name -> 8/7/6 weight bits, 8-bit activations); the rest stays float.

    One calibration with every chosen layer at 8 bits, then each layer's weight grid is set to
    its own bits (MSE-clipped range below 8, bias correction of those layers), then baked.
    """
    from edgecnn.passes.quant.adaround import bias_correction
    from edgecnn.passes.quantize import QuantConfig, quantize_model, weight_amax
    from edgecnn.passes.quant.quantizers import bake_weights, quant_layers

    if not bits:
        return model
    config = QuantConfig(bits=8, include=sorted(bits), mode="qat", qat_steps=0, target=target)
    model, _ = quantize_model(model, config, calib_batches, progress=False)
    low = []
    with torch.no_grad():
        for name, layer in quant_layers(model):
            b = bits.get(name, 8)
            if b != 8:
                layer.weight_quantizer.num_bits = b
                layer.weight_quantizer.set_amax(weight_amax(layer.weight, b, "mse"))
                low.append(name)
    if low:
        bias_correction(model, calib_batches[:2], layers=low)
    bake_weights(model)
    return model.eval()


def apply_config(model: nn.Module, space: Space, config: dict, calib_batches: list, example: Optional[torch.Tensor] = None,
                 target: str = DEFAULT_TARGET, quantize: bool = True) -> nn.Module:
    """A copy of ``model`` transformed as ``config`` says: prune, then shift, then quantize."""
    from edgecnn.passes.registry import PassContext, run_pass

    model = copy.deepcopy(model).eval()
    example = example if example is not None else calib_batches[0][:1]
    ctx = PassContext(example_input=example, calib_batches=calib_batches, progress=False)
    overrides = {u.layer: config[u.name] for u in space.units if u.kind == "prune" and config.get(u.name, 1.0) < 1.0}
    if overrides:
        model = run_pass("channel_prune", model, {"density": 1.0, "overrides": overrides}, ctx)
    shifted = [u.layer for u in space.units if u.kind == "shift" and config.get(u.name)]
    if shifted:
        model = run_pass("shift", model, {"include": shifted}, ctx)
    if not quantize:
        return model.eval()
    model = run_pass("fold_bn", model, None, ctx)
    names = {n for n, _ in _layers(model)}
    bits = {}
    for layer in space.layers:
        b = BITS[space.precision_of(config, layer)]
        if not b:
            continue
        # A shifted full conv became shift + 1x1: its 1x1 inherits the precision choice.
        for name in [layer] if layer in names else [n for n in names if n.startswith(layer + ".")]:
            bits[name] = b
    return quantize_per_layer(model, bits, calib_batches, target)


def needs_recovery(space: Space, config: dict) -> bool:
    """Pruning or shift chosen: accuracy needs training back."""
    return any(config.get(u.name, u.options[0]) != u.options[0] for u in space.units if u.kind in ("prune", "shift"))
