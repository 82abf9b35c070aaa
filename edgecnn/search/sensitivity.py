"""Accuracy sensitivity of every (unit, option), alone, on held-out search images.

Score = the expected increase of KL(FP32 || candidate) of the final softmax, mean over
images. Precision: the model is prepared and calibrated once with every layer quantized;
one forward/backward pass gives each layer's output gradient, and each layer's output error
at each weight bit-width is computed locally (the Fisher / second-order estimate of
NVIDIA ModelOpt's AutoQuantize: cheap, one network pass per batch instead of one per
layer and option). Pruning and shift change many channels at once and are measured
directly: the unit is applied alone to a copy of the float model and the KL is computed
(with top-1 agreement). Scores are summed over units as the search's accuracy proxy (the
additivity assumption of HAQ and AutoQuantize); the search then verifies the configurations
it picks by building and measuring them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.search.space import BITS, Space, apply_config
from edgecnn.targets import DEFAULT_TARGET


@dataclass
class Score:
    kl: float
    agreement: float


def score(logits: torch.Tensor, reference: torch.Tensor) -> Score:
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    agree = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    return Score(max(0.0, float(kl)), agree)


@torch.no_grad()
def forward_logits(model: nn.Module, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The model's logits on ``images``, in eval mode, a batch at a time."""
    model.eval()
    return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])


def _capture(model: nn.Module, names: list[str]):
    """Forward hooks keeping each layer's input and (gradient-retaining) output; the network
    continues on a copy of the output, so in-place activations leave the kept one intact."""
    inputs, outputs, handles = {}, {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(_m, args, output, name=name):
            inputs[name] = args[0].detach()
            output.retain_grad()
            outputs[name] = output
            return output.clone()
        handles.append(modules[name].register_forward_hook(hook))
    return inputs, outputs, handles


def _precision_scores(model, space: Space, images, calib_batches, target, progress, chunk: int = 8, budget=None) -> dict:
    """Expected KL increase of quantizing each layer alone, AutoQuantize's second-order estimate:
    1/2 sum (dlogp/dy)^2 (y_q - y)^2 over the layer's output, with labels sampled from the
    FP32 model's own softmax (so the squared gradient estimates the Fisher diagonal)."""
    from edgecnn.passes.quant.quantizers import quant_layers, quantizers
    from edgecnn.passes.quantize import weight_amax

    units = {u.layer: u for u in space.units if u.kind == "precision"}
    prepared = quantize_per_layer_unbaked(copy.deepcopy(model), sorted(units), calib_batches, target)
    for _, q in quantizers(prepared):
        q.enabled = False
    qlayers = dict(quant_layers(prepared))
    sums: dict[tuple, float] = {(u.name, o): 0.0 for u in units.values() for o in u.options}
    generator = torch.Generator().manual_seed(0)
    seen = 0
    for start in _track(range(0, len(images), chunk), "sensitivity: precision", progress):
        if budget is not None:
            if seen and budget.spent():  # the first chunk always: a score needs some images
                budget.skip(f"precision sensitivity on {len(images) - seen} of {len(images)} images")
                break
            budget.phase = f"precision sensitivity, image {start + 1} of {len(images)}"
        x = images[start:start + chunk]
        seen += len(x)
        inputs, outputs, handles = _capture(model, list(units))
        logits = model(x)
        sampled = torch.multinomial(F.softmax(logits.detach(), 1), 1, generator=generator).squeeze(1)
        F.cross_entropy(logits, sampled, reduction="sum").backward()
        for h in handles:
            h.remove()
        for name, unit in units.items():
            layer, y, g = qlayers[name], outputs[name].detach(), outputs[name].grad
            wq, iq = layer.weight_quantizer, layer.input_quantizer
            saved = (wq.num_bits, wq.amax.clone())
            for option in unit.options[1:]:
                bits = BITS[option]
                wq.num_bits = bits
                wq.set_amax(weight_amax(layer.weight, bits, "max" if bits == 8 else "mse"))
                wq.enabled = iq.enabled = True
                with torch.no_grad():
                    sums[(unit.name, option)] += 0.5 * float(((layer(inputs[name]) - y) ** 2 * g ** 2).sum())
                wq.enabled = iq.enabled = False
            wq.num_bits = saved[0]
            wq.set_amax(saved[1])
        model.zero_grad(set_to_none=True)
    return {key: Score(value / max(1, seen), float("nan")) for key, value in sums.items()}


def quantize_per_layer_unbaked(model, names, calib_batches, target):
    """Every named layer quantized (8 bit) and calibrated, weights not baked (bits still free)."""
    from edgecnn.passes.quantize import QuantConfig, quantize_model

    model, _ = quantize_model(model, QuantConfig(bits=8, include=names, mode="qat", qat_steps=0, target=target),
                              calib_batches, progress=False)
    return model.eval()


def _track(items, label, progress):
    if not progress:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)


def measure(model: nn.Module, space: Space, images: torch.Tensor, calib_batches: list, target: str = DEFAULT_TARGET,
            progress: bool = False, budget=None) -> dict[tuple, Score]:
    """{(unit name, option): Score} for every option of every unit (first options score 0).

    Past the time ``budget`` a pruning / shift unit is not scored: its other options get an
    infinite score, so the search keeps that unit as it is."""
    model = copy.deepcopy(model).eval()
    out = _precision_scores(model, space, images, calib_batches, target, progress, budget=budget)
    reference = forward_logits(model, images)
    others = [u for u in space.units if u.kind != "precision"]
    unscored = 0
    for index, unit in enumerate(_track(others, "sensitivity: pruning / shift", progress)):
        out[(unit.name, unit.options[0])] = Score(0.0, 1.0)
        if budget is not None:
            if budget.spent():
                unscored += 1
                for option in unit.options[1:]:
                    out[(unit.name, option)] = Score(float("inf"), float("nan"))
                continue
            budget.phase = f"pruning / shift sensitivity, unit {index + 1} of {len(others)}"
        for option in unit.options[1:]:
            config = {unit.name: option}
            candidate = apply_config(model, space, config, calib_batches, images[:1], target, quantize=False)
            out[(unit.name, option)] = score(forward_logits(candidate, images), reference)
    if unscored:
        budget.skip(f"sensitivity of {unscored} of {len(others)} pruning / shift units (kept as they are)")
    return out


def proxy(space: Space, config: dict, scores: dict[tuple, Score]) -> float:
    """Summed KL of the configuration's choices (the search's additive accuracy proxy)."""
    return sum(scores[(u.name, config.get(u.name, u.options[0]))].kl for u in space.units)
