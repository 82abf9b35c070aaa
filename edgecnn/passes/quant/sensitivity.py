"""Per-layer sensitivity: quantize one layer at a time and measure how far the output moves.

Depthwise convolutions are where MobileNet INT8/INT6 loses accuracy; measuring each layer
alone on calibration data finds them (and any other fragile layer) so they can be kept at
higher precision. Score = mean over inputs of ||y_q - y_fp||^2 / ||y_fp||^2 (normalised
output error); top-1 agreement with FP32 is reported alongside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from edgecnn.passes.quant.quantizers import quant_layers, quantizers


@dataclass
class LayerSensitivity:
    name: str
    error: float  # normalised output MSE with only this layer quantized
    agreement: float  # top-1 agreement with the float model


def _normalised_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    out, ref = out.flatten(1), ref.flatten(1)
    return ((out - ref) ** 2).sum(1) / (ref**2).sum(1).clamp_min(1e-12)


def analyse(model: nn.Module, inputs: list[torch.Tensor], progress: bool = True) -> list[LayerSensitivity]:
    """Sensitivity of every quantized layer of a calibrated model, worst first.

    Quantizer states are restored afterwards.
    """
    states = {id(q): q.enabled for _, q in quantizers(model)}
    layers = quant_layers(model)
    results = []
    was_training = model.training
    model.eval()
    try:
        for _, q in quantizers(model):
            q.enabled = False
        with torch.no_grad():
            references = [model(x) for x in inputs]
            iterator = layers
            if progress:
                from rich.progress import track

                iterator = track(layers, description="sensitivity", transient=True)
            for name, layer in iterator:
                layer.weight_quantizer.enabled = states[id(layer.weight_quantizer)]
                layer.input_quantizer.enabled = states[id(layer.input_quantizer)]
                errors, agree, total = [], 0, 0
                for x, ref in zip(inputs, references):
                    out = model(x)
                    errors.append(_normalised_error(out, ref))
                    if out.dim() == 2:
                        agree += int((out.argmax(1) == ref.argmax(1)).sum())
                        total += len(out)
                layer.weight_quantizer.enabled = False
                layer.input_quantizer.enabled = False
                results.append(LayerSensitivity(name, float(torch.cat(errors).mean()), agree / total if total else float("nan")))
    finally:
        for _, q in quantizers(model):
            q.enabled = states[id(q)]
        model.train(was_training)
    return sorted(results, key=lambda r: r.error, reverse=True)
