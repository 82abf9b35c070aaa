"""Weight-rounding refinements for low-bit weights: bias correction and learned rounding.

* Bias correction: rounding weights shifts each output channel's mean by
  ``E[conv(x, W - W_q)]``; measure that shift on calibration data and add it to the bias.
* Learned rounding (AdaRound, Nagel et al. 2020): each weight may round down or up; a soft
  rounding variable per weight is optimised layer by layer so the quantized layer
  reproduces the float layer's output on calibration data, with a regulariser that pushes
  every variable to 0 or 1. Kept cheap: a few hundred Adam steps per layer on small random
  crops of a few images.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.models.layer_select import visit_layer_inputs
from edgecnn.passes.quant.quantizers import QuantConv2d, quant_layers, weight_qmax

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (AdaRound paper)


def layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, quantize_input: bool = True) -> torch.Tensor:
    """``layer``'s output on ``x`` with an explicit weight (input quantizer and SAME padding kept)."""
    if quantize_input:
        x = layer.input_quantizer(x)
    if isinstance(layer, QuantConv2d):
        if layer.same_padding:
            x = layer._pad(x)
        return layer._conv_forward(x, weight, layer.bias)
    return F.linear(x, weight, layer.bias)


def _capture_inputs(model: nn.Module, layer: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    captured = []
    visit_layer_inputs(model, [("", layer)], inputs, lambda _name, _layer, x: captured.append(x))
    return torch.cat(captured)


def bias_correction(model: nn.Module, inputs: list[torch.Tensor], layers: Optional[list[str]] = None) -> dict[str, float]:
    """Add the mean output shift caused by weight rounding to each layer's bias (in place).

    One pass of the quantized model over ``inputs``; returns the largest correction per layer.
    """
    selected = [(n, m) for n, m in quant_layers(model) if (layers is None or n in layers) and m.weight_bits]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def accumulate(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        delta = layer_output(layer, x, layer.weight - layer.quantized_weight())
        if layer.bias is not None:
            delta = delta - layer.bias.view(1, -1, *([1] * (delta.dim() - 2)))
        dims = [0] + list(range(2, delta.dim()))
        sums[name] = sums.get(name, 0) + delta.sum(dims)
        counts[name] = counts.get(name, 0) + delta.numel() // delta.shape[1]

    visit_layer_inputs(model, selected, inputs, accumulate)
    corrections = {}
    with torch.no_grad():
        for name, layer in selected:
            if name not in sums:
                continue
            shift = sums[name] / counts[name]
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features))
            layer.bias += shift
            corrections[name] = float(shift.abs().max())
    return corrections


def _random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> tuple[slice, slice]:
    h, w = x.shape[-2:]
    top = int(torch.randint(0, max(h - size, 0) + 1, (1,), generator=generator))
    left = int(torch.randint(0, max(w - size, 0) + 1, (1,), generator=generator))
    return slice(top, top + size), slice(left, left + size)


def adaround_layer(
    layer: nn.Module,
    quant_inputs: torch.Tensor,
    float_inputs: torch.Tensor,
    iters: int = 300,
    batch: int = 4,
    crop: int = 32,
    lr: float = 0.1,
    reg_weight: float = 0.01,
    seed: int = 0,
) -> float:
    """Learn up/down rounding of ``layer``'s weights (in place, weights end on the grid).

    The target is the float layer on the float model's input; the candidate is the quantized
    layer on the quantized model's input, so the rounding also absorbs upstream error.
    Returns the fraction of weights rounded differently from round-to-nearest.
    """
    quantizer = layer.weight_quantizer
    qmax = weight_qmax(quantizer.num_bits)
    shape = [-1] + [1] * (layer.weight.dim() - 1)
    scale = (quantizer.amax / qmax).reshape(shape).detach()
    weight = layer.weight.detach()
    bound = quantizer.amax.reshape(shape)
    scaled = torch.maximum(torch.minimum(weight, bound), -bound) / scale
    floor = torch.floor(scaled)
    rest = (scaled - floor).clamp(0.01, 0.99)
    # Initialise so the soft rounding starts at the fractional part (round-to-nearest-ish).
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
    optimiser = torch.optim.Adam([v], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    is_conv = quant_inputs.dim() == 4
    warmup = int(0.2 * iters)

    def soft(v):
        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    with torch.no_grad():
        xq_all = layer.input_quantizer(quant_inputs)
    for step in range(iters):
        idx = torch.randint(0, len(quant_inputs), (min(batch, len(quant_inputs)),), generator=generator)
        xq, xf = xq_all[idx], float_inputs[idx]
        if is_conv and crop and xq.shape[-1] > crop:
            rows, cols = _random_crop(xq, crop, generator)
            xq, xf = xq[..., rows, cols], xf[..., rows, cols]
        with torch.no_grad():
            target = layer_output(layer, xf, weight, quantize_input=False)
        h = soft(v)
        w_soft = torch.clamp(floor + h, -qmax, qmax) * scale
        out = layer_output(layer, xq, w_soft, quantize_input=False)
        # Scale-free: reconstruction relative to the target's energy, regulariser averaged
        # per weight, so one ``reg_weight`` suits every layer and a short schedule.
        recon = (out - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)
        if step >= warmup:
            beta = 20 - (20 - 2) * (step - warmup) / max(iters - warmup, 1)
            loss = recon + reg_weight * (1 - (2 * h - 1).abs().pow(beta)).mean()
        else:
            loss = recon
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        hard = (soft(v) >= 0.5).float()
        integers = torch.clamp(floor + hard, -qmax, qmax)
        nearest = torch.clamp(torch.round(scaled), -qmax, qmax)
        changed = float((integers != nearest).float().mean())
        layer.weight.copy_(integers * scale)
    return changed


def adaround(
    model: nn.Module,
    float_model: nn.Module,
    inputs: list[torch.Tensor],
    layers: Optional[list[str]] = None,
    iters: int = 300,
    progress: bool = True,
) -> dict[str, float]:
    """Learned rounding for every quantized layer, in network order (in place).

    ``float_model`` is the unquantized model with the same module names (a deep copy taken
    before quantization). Returns, per layer, the fraction of weights whose rounding changed.
    """
    float_modules = dict(float_model.named_modules())
    selected = [(n, m) for n, m in quant_layers(model) if (layers is None or n in layers) and m.weight_bits]
    changed = {}
    was_training = model.training
    model.eval()
    float_model.eval()
    iterator = selected
    if progress:
        from rich.progress import track

        iterator = track(selected, description="learned rounding", transient=True)
    try:
        for name, layer in iterator:
            quant_inputs = _capture_inputs(model, layer, inputs)
            float_inputs = _capture_inputs(float_model, float_modules[name], inputs)
            changed[name] = adaround_layer(layer, quant_inputs, float_inputs, iters=iters)
    finally:
        model.train(was_training)
    return changed


def float_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()
