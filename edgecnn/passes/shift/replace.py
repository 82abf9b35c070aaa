"""The ``shift`` pass: replace k x k convs by shifts (see :mod:`edgecnn.passes.shift`)."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn as nn
from pydantic import Field

from edgecnn.errors import UserError
from edgecnn.models.layer_select import layer_kind, select_layers
from edgecnn.passes.registry import PassConfig, PassReport, register_pass
from edgecnn.passes.shift.offsets import choose_taps
from edgecnn.passes.shift.ops import ActiveShift, Shift, deploy_form_for


class ShiftConfig(PassConfig):
    """Config of the ``shift`` pass."""

    kind: Literal["grouped", "active"] = "grouped"
    include: Optional[list[str]] = None
    exclude: Optional[list[str]] = None
    # Layer kinds to replace: depthwise k x k convs and full k x k convs (Fire expand3x3).
    kinds: list[Literal["depthwise", "conv"]] = ["depthwise", "conv"]
    # Convs reading the image (<= 4 input channels) keep their kernel, as in ShiftNet.
    skip_input_convs: bool = True
    # Which channel takes which offset: ShiftNet's fixed contiguous split, the same even
    # split chosen by the pretrained kernel (keeps the most kernel energy), or each
    # channel's own strongest tap (uneven groups; closest to the pretrained kernels).
    assign: Literal["even", "balanced", "dominant"] = "balanced"
    # Per-channel scale kept from the pretrained kernel: its weight at the kept tap, or the
    # kernel sum (exact on constant images).
    init_scale: Literal["tap", "dc"] = "dc"
    deploy: Literal["auto", "onehot_dwconv", "pad_slice"] = "auto"
    backend: str = "ort"
    ste: bool = True  # active shift: train with rounded offsets (straight-through gradient)
    # With calibration batches in the context: fit the kept weights layer by layer by least
    # squares to the replaced conv's output, on the inputs the already-shifted model produces.
    reconstruct: bool = True
    calib_images: int = Field(32, ge=1)


def _shift_module(cfg: ShiftConfig, channels: int, kernel: int, taps, stride: int, padding, deploy: str):
    if cfg.kind == "active":
        return ActiveShift(channels, kernel, taps, stride, padding, deploy, ste=cfg.ste)
    return Shift(channels, kernel, taps, stride, padding, deploy)


def _conv_padding(conv: nn.Conv2d):
    from edgecnn.models.layers import SamePadConv2d

    if isinstance(conv, SamePadConv2d):
        return "same"
    if conv.padding == "same":
        return conv.kernel_size[0] // 2
    if isinstance(conv.padding, str) or len(set(conv.padding)) != 1:
        return None
    return conv.padding[0]


def _check_replaceable(name: str, conv: nn.Conv2d) -> Optional[str]:
    """Why ``conv`` cannot become a shift, or None."""
    kh, kw = conv.kernel_size
    if kh != kw or kh < 2:
        return "kernel is not square k x k with k >= 2"
    if conv.dilation != (1, 1):
        return "dilated"
    if conv.stride[0] != conv.stride[1]:
        return "unequal strides"
    if _conv_padding(conv) is None:
        return "asymmetric padding"
    if conv.padding_mode != "zeros":
        return "non-zero padding mode"
    return None


def _absorb_scale_into_bn(bn: nn.BatchNorm2d, scale: torch.Tensor, offset: Optional[torch.Tensor] = None) -> None:
    """BN(scale * x + offset) == BN'(x) in eval mode: (mean - offset)/scale, var/scale^2, gamma rescaled."""
    with torch.no_grad():
        safe = torch.where(scale.abs() < 1e-8, torch.full_like(scale, 1e-8) * torch.sign(scale + 1e-30), scale)
        old_std = torch.sqrt(bn.running_var + bn.eps)
        if offset is not None:
            bn.running_mean.sub_(offset)
        bn.running_mean.div_(safe)
        bn.running_var.div_(safe * safe)
        new_std = torch.sqrt(bn.running_var + bn.eps)
        bn.weight.mul_(safe * new_std / old_std)


def _replace_depthwise(cfg, conv: nn.Conv2d, next_bn: Optional[nn.BatchNorm2d], deploy: str, inputs=None):
    channels, kernel = conv.in_channels, conv.kernel_size[0]
    weight = conv.weight.detach().reshape(channels, -1)  # (C, k*k) (channel multiplier 1)
    energy = weight.abs()
    taps = choose_taps(cfg.assign, energy, kernel)
    tap_index = taps[:, 0] * kernel + taps[:, 1]
    scale = weight.sum(1) if cfg.init_scale == "dc" else weight.gather(1, tap_index[:, None])[:, 0]
    offset = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(channels)
    shift = _shift_module(cfg, channels, kernel, taps, conv.stride[0], _conv_padding(conv), deploy)
    how = ""
    if inputs is not None:
        scale, offset = _fit_depthwise(conv, shift, inputs)
        how = "least-squares fit on calibration data; "
    if next_bn is not None and next_bn.num_features == channels:
        _absorb_scale_into_bn(next_bn, scale, offset)
        return shift, how + "scale absorbed into the next BatchNorm"
    affine = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
    with torch.no_grad():
        affine.weight.copy_(scale.reshape(channels, 1, 1, 1))
        affine.bias.copy_(offset)
    return nn.Sequential(shift, affine), how + "scale kept in a 1x1 depthwise conv"


@torch.no_grad()
def _fit_depthwise(conv: nn.Conv2d, shift: nn.Module, inputs: torch.Tensor):
    """Per-channel (scale, offset) minimising ||conv(x) - (scale * shift(x) + offset)||^2."""
    target = conv(inputs).transpose(0, 1).reshape(conv.out_channels, -1)
    shifted = _as_fixed(shift)(inputs).transpose(0, 1).reshape(conv.out_channels, -1)
    mean_s, mean_t = shifted.mean(1), target.mean(1)
    cov = ((shifted - mean_s[:, None]) * (target - mean_t[:, None])).mean(1)
    var = (shifted - mean_s[:, None]).pow(2).mean(1)
    scale = torch.where(var > 1e-12, cov / var.clamp_min(1e-12), torch.zeros_like(var))
    return scale, mean_t - scale * mean_s


def _as_fixed(shift: nn.Module) -> "Shift":
    return shift.freeze() if isinstance(shift, ActiveShift) else shift


@torch.no_grad()
def _fit_pointwise(conv: nn.Conv2d, pointwise: nn.Conv2d, shift: nn.Module, inputs: torch.Tensor, ridge: float = 1e-3):
    """Least-squares 1x1 weights: output channel o of ``shift(pointwise(x))`` fits ``conv(x)``.

    A 1x1 conv commutes with a shift (up to the bias at the border), so each tap group is an
    ordinary linear regression of the target on the inputs shifted by that tap.
    """
    target = conv(inputs)  # (N, O, Ho, Wo)
    fixed = _as_fixed(shift)
    cin = inputs.shape[1]
    taps = fixed.taps.tolist()
    for tap in sorted(set(map(tuple, taps))):
        outs = [o for o, t in enumerate(taps) if tuple(t) == tap]
        probe = Shift(cin, fixed.kernel_size, torch.tensor([tap] * cin), fixed.stride, fixed.padding, "pad_slice")
        a = probe(inputs).transpose(0, 1).reshape(cin, -1).T.double()  # (samples, Cin)
        a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
        y = target[:, outs].transpose(0, 1).reshape(len(outs), -1).T.double()
        gram = a.T @ a
        gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        solution = torch.linalg.solve(gram, a.T @ y)  # (Cin + 1, len(outs))
        pointwise.weight[outs] = solution[:-1].T.float()[:, :, None, None].to(pointwise.weight.dtype)
        if pointwise.bias is not None:
            pointwise.bias[outs] = solution[-1].float()


def _replace_full(cfg, conv: nn.Conv2d, deploy: str, inputs=None):
    out_channels, kernel = conv.out_channels, conv.kernel_size[0]
    weight = conv.weight.detach()  # (O, I/g, k, k)
    per_tap = weight.reshape(out_channels, weight.shape[1], kernel * kernel)
    energy = per_tap.pow(2).sum(1)  # (O, k*k)
    taps = choose_taps(cfg.assign, energy, kernel)
    tap_index = taps[:, 0] * kernel + taps[:, 1]
    pointwise = nn.Conv2d(conv.in_channels, out_channels, 1, groups=conv.groups, bias=conv.bias is not None)
    with torch.no_grad():
        if cfg.init_scale == "dc":
            kept = per_tap.sum(2)
        else:
            kept = per_tap.gather(2, tap_index[:, None, None].expand(-1, per_tap.shape[1], 1))[:, :, 0]
        pointwise.weight.copy_(kept[:, :, None, None])
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    # 1x1 conv first, then the shift of its outputs: each output channel reads all inputs at
    # its own offset (shifting the inputs instead would give every output the same offsets).
    shift = _shift_module(cfg, out_channels, kernel, taps, conv.stride[0], _conv_padding(conv), deploy)
    how = "1x1 conv + shift of its outputs"
    if inputs is not None and conv.groups == 1:
        if pointwise.bias is None:
            pointwise.bias = nn.Parameter(torch.zeros(out_channels))
        _fit_pointwise(conv, pointwise, shift, inputs)
        how += " (least-squares fit on calibration data)"
    return nn.Sequential(pointwise, shift), how


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_macs(conv: nn.Conv2d, out_hw: int) -> int:
    return conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1] * out_hw


class _Captured(Exception):
    pass


def _calibration_images(ctx, config) -> Optional[torch.Tensor]:
    batches = getattr(ctx, "calib_batches", None) if ctx is not None else None
    if batches is None:
        return None
    images, count = [], 0
    for batch in batches:
        batch = batch[0] if isinstance(batch, (list, tuple)) else batch
        images.append(batch[: config.calib_images - count])
        count += images[-1].shape[0]
        if count >= config.calib_images:
            break
    return torch.cat(images) if images else None


@torch.no_grad()
def _layer_inputs(model: nn.Module, layer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The input ``layer`` sees when ``model`` (as transformed so far) runs on ``images``."""
    captured = {}

    def hook(module, inputs):
        captured["x"] = inputs[0].detach().clone()
        raise _Captured

    handle = layer.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    try:
        device = next(layer.parameters()).device
        model(images.to(device))
    except _Captured:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    return captured["x"]


@register_pass("shift", config=ShiftConfig, not_after=("quantize",))
def shift_pass(model: nn.Module, config: ShiftConfig, ctx) -> nn.Module:
    """Replace depthwise and full k x k convs by zero-FLOP shifts (+ 1x1 convs)."""
    deploy = deploy_form_for(config.backend) if config.deploy == "auto" else config.deploy
    candidates = select_layers(model, config.include, config.exclude, kinds=config.kinds)
    # Output sizes (for the MACs columns) from one forward at the context's input, if given.
    out_hw: dict[str, int] = {}
    example = getattr(ctx, "example_input", None)
    if example is not None:
        hooks = [m.register_forward_hook(lambda mod, i, o, n=n: out_hw.__setitem__(n, o.shape[-2] * o.shape[-1]))
                 for n, m in candidates]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example)
        model.train(was_training)
        for h in hooks:
            h.remove()
    parents = {n: m for n, m in model.named_modules()}
    calib = _calibration_images(ctx, config) if config.reconstruct else None
    rows, replaced = [], 0
    params_before = _params(model)
    for name, conv in candidates:
        kind = layer_kind(conv)
        if config.skip_input_convs and conv.in_channels <= 4:
            continue
        why_not = _check_replaceable(name, conv)
        if kind == "depthwise" and conv.out_channels != conv.in_channels:
            why_not = "depthwise channel multiplier > 1"
        if why_not:
            rows.append({"layer": name, "kind": kind, "action": f"kept ({why_not})"})
            continue
        parent_name, _, child = name.rpartition(".")
        parent = parents[parent_name] if parent_name else model
        if kind == "depthwise":
            next_bn = None
            if isinstance(parent, nn.Sequential):
                keys = list(parent._modules)
                position = keys.index(child)
                if position + 1 < len(keys) and isinstance(parent._modules[keys[position + 1]], nn.BatchNorm2d):
                    next_bn = parent._modules[keys[position + 1]]
            inputs = _layer_inputs(model, conv, calib) if calib is not None else None
            new, how = _replace_depthwise(config, conv, next_bn, deploy, inputs)
        else:
            inputs = _layer_inputs(model, conv, calib) if calib is not None else None
            new, how = _replace_full(config, conv, deploy, inputs)
        new = new.to(conv.weight.device)
        setattr(parent, child, new)
        replaced += 1
        hw = out_hw.get(name)
        rows.append({
            "layer": name,
            "kind": kind,
            "kernel": conv.kernel_size[0],
            "stride": conv.stride[0],
            "channels": conv.out_channels,
            "params_before": _params(conv),
            "params_after": _params(new),
            "macs_before": _conv_macs(conv, hw) if hw else None,
            # the 1x1 conv of a replaced strided full conv runs before the subsampling shift
            "macs_after": sum(_conv_macs(m, hw * (conv.stride[0] ** 2 if kind == "conv" else 1))
                              for m in new.modules() if isinstance(m, nn.Conv2d)) if hw else None,
            "action": how,
        })
    if not replaced:
        raise UserError("the shift pass found no k x k conv to replace; check include/exclude/kinds")
    params_after = _params(model)
    summary = {
        "kind": config.kind,
        "deploy": deploy,
        "layers_replaced": replaced,
        "params_before": params_before,
        "params_after": params_after,
    }
    if out_hw:
        summary["macs_removed"] = sum((r.get("macs_before") or 0) - (r.get("macs_after") or 0) for r in rows)
    if ctx is not None:
        ctx.report(PassReport("shift", rows=rows, summary=summary))
    return model
