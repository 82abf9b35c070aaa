"""The ``quantize`` pass: fake-quantized conv/linear layers calibrated on real data (PTQ or QAT).

Order of work (PTQ): swap conv/linear for QuantConv2d/QuantLinear (same names and weight
keys) -> add Add/Concat quantizers where TensorRT wants them, plus the per-target ones
ORT's fusion wants (both Add inputs, global-pool input; torch.fx) -> per-channel
weight ranges (max at 8 bit, MSE search at 6/4 bit) -> one calibration pass (streaming
histograms) -> optional per-layer sensitivity, keeping the worst layers at higher
precision -> optional learned rounding and bias correction -> weights baked onto their grid.

QAT: the same preparation, then (``qat_steps`` > 0) fine-tuning by distillation from the
float model on the calibration data. Activation ranges stay fixed at their calibrated
values; weight ranges follow each channel's current max; gradients pass the rounding by the
straight-through estimator (zero outside the clipping range).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgecnn.errors import UserError
from edgecnn.passes.quant import adaround as adaround_mod
from edgecnn.passes.quant import sensitivity as sensitivity_mod
from edgecnn.passes.quant.calibrate import calibrate, iterate_batches
from edgecnn.passes.quant.placement import insert_graph_quantizers
from edgecnn.passes.quant.quantizers import (
    QuantConv2d,
    QuantLinear,
    TensorQuantizer,
    bake_weights,
    quant_layers,
    replace_layers,
    set_target,
    weight_qmax,
)
from edgecnn.passes.registry import PassConfig, PassContext, PassReport, register_pass
from edgecnn.models.layer_select import layer_kind, select_layers, unknown_weight_layers
from edgecnn.targets import DEFAULT_TARGET, TARGETS, resolve_target_name

__all__ = [
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "SensitivityConfig",
    "TensorQuantizer",
    "quantize",
    "quantize_model",
    "set_target",
    "weight_amax",
    "weight_levels_used",
]


# The weight bit widths the quantizer implements (the CLI's --bits choices come from here).
WeightBits = Literal[4, 6, 7, 8]


class SensitivityConfig(BaseModel):
    """Keep the layers whose lone quantization hurts most at higher precision."""

    model_config = ConfigDict(extra="forbid")
    keep_top_k: int = Field(0, ge=0, description="keep this many most sensitive layers at higher precision")
    threshold: Optional[float] = Field(None, gt=0, description="keep every layer whose normalised output error exceeds this")
    keep_as: Literal["auto", "int8", "float"] = Field("auto", description="auto: int8 when bits < 8, else float")
    batches: int = Field(2, ge=1, description="calibration batches used for the analysis")
    analyse: bool = Field(False, description="measure sensitivity even when nothing is kept (for the report)")

    @property
    def active(self) -> bool:
        return self.keep_top_k > 0 or self.threshold is not None or self.analyse


class QuantConfig(PassConfig):
    """Config of the ``quantize`` pass."""

    bits: WeightBits = Field(8, description="weight bits: 8, 7 (-63..63 grid), 6 (-31..31) or 4 (-7..7), stored as int8")
    activation_bits: int = Field(8, description="activation bits (8 only: lower needs a Clip that breaks int8 fusion)")
    depthwise_bits: Optional[WeightBits] = Field(
        None,
        description="weight bits of depthwise convs; None: 8 when bits < 8 (9 weights per channel lose most at low bits; ~2 % of MobileNet's weights)",
    )
    calibrator: Literal["max", "percentile", "entropy", "mse"] = "mse"
    percentile: float = Field(99.99, gt=50, le=100)
    num_calib_batches: Optional[int] = Field(None, ge=1, description="use only this many calibration batches")
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    skip_first_last: bool = Field(False, description="leave the first conv and the last layer in float")
    weight_range: Literal["auto", "max", "mse"] = Field("auto", description="auto: max at 8 bit, MSE search below")
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    bias_correction: Optional[bool] = Field(None, description="None: on when bits < 8 (low-bit weights shift channel means)")
    adaround: bool = False
    adaround_iters: int = Field(300, ge=1)
    adaround_images: int = Field(16, ge=1, description="calibration images used by learned rounding / bias correction")
    mode: Literal["ptq", "qat"] = "ptq"
    qat_steps: int = Field(0, ge=0, description="QAT: distillation steps on the calibration data (0: only prepare)")
    qat_lr: float = Field(1e-5, gt=0)
    target: str = Field(DEFAULT_TARGET, description="integer encoding the PyTorch model simulates (a target of edgecnn.targets)")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        value = resolve_target_name(value)
        if value not in TARGETS:
            raise ValueError(f"unknown target {value!r}; valid targets: {', '.join(TARGETS)}")
        return value

    @property
    def effective_depthwise_bits(self) -> int:
        if self.depthwise_bits is not None:
            return self.depthwise_bits
        return 8 if self.bits < 8 else self.bits

    @property
    def effective_bias_correction(self) -> bool:
        return self.bits < 8 if self.bias_correction is None else self.bias_correction

    @field_validator("activation_bits")
    @classmethod
    def _act_bits(cls, value: int) -> int:
        if value != 8:
            raise ValueError(f"activation_bits must be 8 (got {value}); lower activation precision breaks int8 fusion")
        return value


# -- weights ---------------------------------------------------------------------------------
def weight_amax(weight: torch.Tensor, bits: int, method: str = "max", candidates: int = 40) -> torch.Tensor:
    """Per-output-channel range: the abs max, or the clip that minimises the squared error."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    absmax = flat.abs().amax(1).clamp_min(1e-8)
    if method == "max":
        return absmax
    qmax = weight_qmax(bits)
    best = absmax.clone()
    best_err = torch.full_like(absmax, math.inf)
    for factor in torch.linspace(0.3, 1.0, candidates):
        amax = absmax * factor
        scale = (amax / qmax)[:, None]
        q = torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale
        err = (flat - q).pow(2).sum(1)
        better = err < best_err
        best = torch.where(better, amax, best)
        best_err = torch.where(better, err, best_err)
    return best


def set_weight_ranges(model: nn.Module, method: str) -> None:
    for _, layer in quant_layers(model):
        q = layer.weight_quantizer
        chosen = method if method != "auto" else ("max" if q.num_bits == 8 else "mse")
        q.set_amax(weight_amax(layer.weight, q.num_bits, chosen))


def weight_levels_used(layer: nn.Module) -> int:
    """Most distinct integer weight values in any output channel (<= 2**bits - 1)."""
    q = layer.weight_quantizer
    if not (q.enabled and q.calibrated):
        return 0
    with torch.no_grad():
        ints = q.integers(layer.quantized_weight()).reshape(layer.weight.shape[0], -1).long() + 128
        present = torch.zeros(ints.shape[0], 256, dtype=torch.bool).scatter_(1, ints, True)
    return int(present.sum(1).max())


# -- the pass --------------------------------------------------------------------------------
def _calibration_inputs(ctx: PassContext, limit: Optional[int]) -> list[torch.Tensor]:
    if ctx is None or ctx.calib_batches is None:
        raise UserError("quantize needs calibration images; pass --calib DIR (a folder of images like the training data)")
    inputs = list(iterate_batches(ctx.calib_batches, limit))
    if not inputs:
        raise UserError("the calibration data is empty; give a folder with at least one image to --calib")
    return inputs


def _take_images(inputs: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    out, seen = [], 0
    for x in inputs:
        if seen >= count:
            break
        out.append(x[: count - seen])
        seen += len(out[-1])
    return out


def _select(model: nn.Module, config: QuantConfig) -> list[str]:
    layers = select_layers(model, config.include or None, config.exclude or None)
    names = [n for n, _ in layers]
    if config.skip_first_last and names:
        all_names = [n for n, _ in select_layers(model)]
        names = [n for n in names if n not in (all_names[0], all_names[-1])]
    if not names:
        raise UserError("quantize selected no layer; check the include/exclude patterns")
    return names


def _keep_higher_precision(model: nn.Module, names: list[str], keep_as: str) -> None:
    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        if keep_as == "int8":
            layer.weight_quantizer.num_bits = 8
            layer.weight_quantizer.set_amax(weight_amax(layer.weight, 8, "max"))
        else:
            layer.weight_quantizer.enabled = False
            layer.input_quantizer.enabled = False


def quantize_model(model: nn.Module, config: QuantConfig, calib_batches, teacher: Optional[nn.Module] = None, progress: bool = True):
    """Quantize ``model`` with ``config`` on ``calib_batches``; returns (model, PassReport)."""
    return _run(model, config, PassContext(calib_batches=calib_batches, teacher=teacher, progress=progress))


def _run(model: nn.Module, config: QuantConfig, ctx: PassContext):
    inputs = _calibration_inputs(ctx, config.num_calib_batches)
    if any(isinstance(m, TensorQuantizer) for m in model.modules()):
        raise UserError("the model is already quantized; run quantize once (on the float model)")
    names = _select(model, config)
    float_model = copy.deepcopy(model).eval()
    timings = {}
    model.eval()
    replace_layers(model, names, config.bits)
    for _, layer in quant_layers(model):
        if layer_kind(layer) == "depthwise":
            layer.weight_quantizer.num_bits = config.effective_depthwise_bits
    model, placement = insert_graph_quantizers(model, config.activation_bits)
    set_target(model, config.target)
    set_weight_ranges(model, config.weight_range)

    start = time.perf_counter()
    images = calibrate(model, inputs, config.calibrator, config.percentile, progress=ctx.progress)
    timings["calibration_s"] = round(time.perf_counter() - start, 2)

    scores, kept = _sensitivity(model, config, inputs, ctx, timings)

    refine_inputs = _take_images(inputs, config.adaround_images)
    changed: dict[str, float] = {}
    corrections: dict[str, float] = {}
    if config.adaround and config.mode == "ptq":
        start = time.perf_counter()
        changed = adaround_mod.adaround(model, float_model, refine_inputs, iters=config.adaround_iters, progress=ctx.progress)
        timings["adaround_s"] = round(time.perf_counter() - start, 2)
    if config.effective_bias_correction:
        corrections = adaround_mod.bias_correction(model, refine_inputs)

    if config.mode == "ptq":
        bake_weights(model)
    else:
        if config.qat_steps:
            qat_finetune(model, ctx.teacher or float_model, inputs, config.qat_steps, config.qat_lr, config.weight_range, ctx.progress)
        model.eval()

    rows = _layer_rows(model, scores, kept, changed, corrections)
    summary = {
        "bits": config.bits,
        "depthwise_bits": config.effective_depthwise_bits,
        "bias_correction": config.effective_bias_correction,
        "calibrator": config.calibrator,
        "calibration_images": images,
        "layers_quantized": sum(1 for r in rows if r["weight_bits"]),
        "layers_kept_higher_precision": len(kept),
        "graph_quantizers": len(placement.adds) + len(placement.concats),
        "target_quantizers": dict(placement.role_quantizers),
        "target": config.target,
        "mode": config.mode,
        **timings,
    }
    skipped = unknown_weight_layers(model)
    if skipped:  # left in float: said in the console and the report, never silently
        summary["skipped_layers"] = skipped
    if not placement.traced:
        summary["placement_warning"] = f"model not fx-traceable, Add/Concat inputs left unquantized ({placement.reason})"
    return model, PassReport("quantize", rows=rows, summary=summary)


def _sensitivity(model: nn.Module, config: QuantConfig, inputs, ctx: PassContext, timings: dict):
    """Per-layer sensitivity (when asked for) and the layers kept at higher precision."""
    scores: dict[str, sensitivity_mod.LayerSensitivity] = {}
    kept: list[str] = []
    if not config.sensitivity.active:
        return scores, kept
    start = time.perf_counter()
    results = sensitivity_mod.analyse(model, inputs[: config.sensitivity.batches], progress=ctx.progress)
    timings["sensitivity_s"] = round(time.perf_counter() - start, 2)
    scores = {r.name: r for r in results}
    kept = [r.name for r in results[: config.sensitivity.keep_top_k]]
    if config.sensitivity.threshold is not None:
        kept += [r.name for r in results if r.error > config.sensitivity.threshold and r.name not in kept]
    keep_as = config.sensitivity.keep_as
    if keep_as == "auto":
        keep_as = "int8" if config.bits < 8 else "float"
    _keep_higher_precision(model, kept, keep_as)
    return scores, kept


def _layer_rows(model: nn.Module, scores: dict, kept: list[str], changed: dict, corrections: dict) -> list[dict]:
    """One report row per quantized layer."""
    rows = []
    for name, layer in quant_layers(model):
        q_in = layer.input_quantizer
        scale = float(q_in.encoding()[0]) if q_in.enabled and q_in.calibrated else None
        row = {
            "name": name,
            "kind": layer_kind(layer),
            "weight_bits": layer.weight_bits,
            "act_scale": scale,
            "weight_levels": weight_levels_used(layer),
            "sensitivity": scores[name].error if name in scores else None,
            "kept": name in kept,
        }
        if name in changed:
            row["adaround_changed"] = changed[name]
        if name in corrections:
            row["bias_shift"] = corrections[name]
        rows.append(row)
    return rows


def qat_finetune(
    model: nn.Module,
    teacher: nn.Module,
    inputs: list[torch.Tensor],
    steps: int,
    lr: float = 1e-5,
    weight_range: str = "auto",
    progress: bool = True,
) -> None:
    """Distil ``teacher`` into the fake-quantized ``model`` on ``inputs`` (no labels needed)."""
    teacher.eval()
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=lr)
    model.train()
    for m in model.modules():  # keep BatchNorm statistics fixed: calibration data is small
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    iterator = range(steps)
    if progress:
        from rich.progress import track

        iterator = track(iterator, description="QAT", transient=True)
    for step in iterator:
        x = inputs[step % len(inputs)]
        with torch.no_grad():
            target = F.log_softmax(teacher(x), dim=1)
        out = F.log_softmax(model(x), dim=1)
        loss = F.kl_div(out, target, log_target=True, reduction="batchmean")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            set_weight_ranges(model, weight_range)


@register_pass("quantize", config=QuantConfig, not_after=("quantize",))
def quantize(model: nn.Module, config: QuantConfig, ctx: PassContext) -> nn.Module:
    """Quantize conv/linear layers (8/6/4-bit weights, 8-bit activations), calibrated PTQ or QAT."""
    model, report = _run(model, config, ctx)
    ctx.report(report)
    return model
