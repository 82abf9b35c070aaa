"""Shift convolutions: replace spatial convolutions by zero-FLOP, zero-parameter channel shifts.

A shift moves each channel by one integer offset (zero padding at the border): ShiftNet
(Wu et al. 2018) splits the channels evenly over the k*k offsets of the kernel it replaces;
active shift (Jeon & Kim 2018) learns a real offset per channel (bilinear interpolation in
training, rounded to integers for deployment, L1 penalty for sparsity).

What the pass rewrites (see docs/shift.md):

* a depthwise k x k conv -> :class:`Shift` on its channels. The conv's per-channel weight at
  the kept tap (``init_scale='tap'``) or its sum (``'dc'``) is absorbed into the BatchNorm that
  follows it (all zoo models have one); without a BatchNorm a 1x1 depthwise conv keeps the scale.
* a full k x k conv (SqueezeNet's Fire ``expand3x3``) -> 1x1 conv (k*k fewer parameters)
  followed by a :class:`Shift` of its output channels; output channel ``o`` keeps the taps
  ``W[o, :, t_o]`` of its assigned offset ``t_o``.

A shift is stored as per-channel *taps* ``(ty, tx)`` into the zero-padded input, the same
convention as the conv it replaces: ``out[c, y, x] = pad(in)[c, ty_c + y*s, tx_c + x*s]``.
Two export forms compute exactly that (bit for bit, any float input): a depthwise conv with
one-hot kernels of value 1.0 (``onehot_dwconv``) and Pad + strided Slice + Concat
(``pad_slice``). No library ships a shift op with an ONNX form, so both are written here.
"""

from __future__ import annotations

import warnings
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from pydantic import Field

from edgecnn.passes.registry import PassConfig, PassReport, register_pass
from edgecnn.passes.targets import layer_kind, select_layers
from edgecnn.targets import shift_deploy_form

DeployForm = Literal["onehot_dwconv", "pad_slice"]

def deploy_form_for(backend: str) -> str:
    """The exact deploy form for a target (or backend) name: ``shift_deploy`` of :mod:`edgecnn.targets`.

    The one-hot depthwise conv is the fastest exact form measured (bench/shift_distill.py,
    bench/results/shift_distill.md); runtimes not measured use it too, each with its own fast
    depthwise kernel.
    """
    return shift_deploy_form(backend)


# ---------------------------------------------------------------------------------------
# Functional shifts (both deploy forms) and the padding rule of the replaced conv.


def conv_pads(height: int, width: int, kernel: int, stride: int, padding) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding of the replaced conv: symmetric int or TF 'same'."""
    if padding == "same":
        from edgecnn.models.layers import same_padding

        top, bottom = same_padding(height, kernel, stride)
        left, right = same_padding(width, kernel, stride)
        return left, right, top, bottom
    return padding, padding, padding, padding


def _out_size(size: int, before: int, after: int, kernel: int, stride: int) -> int:
    return (size + before + after - kernel) // stride + 1


def onehot_weight(taps: torch.Tensor, kernel: int, dtype=torch.float32) -> torch.Tensor:
    """Depthwise weight (C, 1, k, k) with a single 1.0 per channel at its tap."""
    channels = taps.shape[0]
    weight = torch.zeros(channels, 1, kernel, kernel, dtype=dtype, device=taps.device)
    weight[torch.arange(channels, device=taps.device), 0, taps[:, 0], taps[:, 1]] = 1.0
    return weight


def shift_onehot(x: torch.Tensor, weight: torch.Tensor, stride: int, pads) -> torch.Tensor:
    """Shift as a depthwise conv with one-hot kernels (exact: x * 1.0 plus zeros)."""
    left, right, top, bottom = pads
    if left == right == top == bottom:
        return F.conv2d(x, weight, None, stride, left, 1, x.shape[1])
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, None, stride, 0, 1, x.shape[1])


def shift_pad_slice(x: torch.Tensor, groups: list[tuple[int, int, list[int]]], inverse: Optional[list[int]],
                    kernel: int, stride: int, pads) -> torch.Tensor:
    """Shift as Pad + one strided Slice per tap group + Concat (+ a channel Gather when the
    groups are not contiguous). ``groups`` = [(ty, tx, channels)] in concat order."""
    left, right, top, bottom = pads
    height, width = x.shape[-2], x.shape[-1]
    out_h = _out_size(height, top, bottom, kernel, stride)
    out_w = _out_size(width, left, right, kernel, stride)
    padded = F.pad(x, (left, right, top, bottom)) if (left or right or top or bottom) else x
    pieces = []
    for ty, tx, channels in groups:
        if inverse is None:  # contiguous channel range
            source = padded[:, channels[0]: channels[-1] + 1]
        else:
            source = padded.index_select(1, torch.tensor(channels, device=x.device))
        pieces.append(source[:, :, ty: ty + (out_h - 1) * stride + 1: stride, tx: tx + (out_w - 1) * stride + 1: stride])
    out = torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]
    if inverse is not None:
        out = out.index_select(1, torch.tensor(inverse, device=x.device))
    return out


def reference_shift(x: torch.Tensor, offsets, stride: int = 1) -> torch.Tensor:
    """Per-channel roll + zero fill, then subsample: the definition the fast forms are tested against.

    ``offsets[c] = (dy, dx)`` means ``out[c, y, x] = in[c, y*s + dy, x*s + dx]`` (0 outside).
    """
    out = torch.zeros_like(x)
    height, width = x.shape[-2:]
    for c, (dy, dx) in enumerate(offsets):
        rolled = torch.roll(x[:, c], shifts=(-dy, -dx), dims=(-2, -1))
        valid = torch.zeros(height, width, dtype=torch.bool)
        valid[max(0, -dy): height - max(0, dy), max(0, -dx): width - max(0, dx)] = True
        out[:, c] = torch.where(valid, rolled, torch.zeros((), dtype=x.dtype))
    return out[:, :, ::stride, ::stride]


# ---------------------------------------------------------------------------------------
# Modules


def even_taps(channels: int, kernel: int) -> torch.Tensor:
    """ShiftNet's assignment: channels split evenly over the k*k taps in contiguous groups,
    the remainder on the centre tap."""
    per_tap = channels // (kernel * kernel)
    taps = [(t // kernel, t % kernel) for t in range(kernel * kernel) for _ in range(per_tap)]
    centre = (kernel // 2, kernel // 2)
    taps += [centre] * (channels - len(taps))
    # Keep groups contiguous: sort by tap, centre group holding the remainder.
    taps.sort()
    return torch.tensor(taps, dtype=torch.long)


def balanced_taps(energy: torch.Tensor, kernel: int) -> torch.Tensor:
    """Even split over the taps (as ShiftNet) but choosing which channel takes which tap so
    that the kept kernel energy is largest: an assignment problem (scipy's Hungarian solver).

    ``energy`` is (C, k*k): how much of channel c's kernel sits at each tap.
    """
    from scipy.optimize import linear_sum_assignment

    channels = energy.shape[0]
    slots = even_taps(channels, kernel)
    slot_index = (slots[:, 0] * kernel + slots[:, 1]).numpy()
    cost = -energy.detach().double().numpy()[:, slot_index]  # (C channels, C slots)
    rows, cols = linear_sum_assignment(cost)
    taps = torch.empty(channels, 2, dtype=torch.long)
    taps[torch.as_tensor(rows)] = slots[torch.as_tensor(cols)]
    return taps


def dominant_taps(energy: torch.Tensor, kernel: int) -> torch.Tensor:
    """Each channel keeps the tap holding most of its kernel's energy (groups of any size).

    Pretrained 3x3 kernels are centre-heavy, so most channels keep the centre: the closest
    single-tap approximation of each kernel, at the price of ShiftNet's even spread.
    """
    index = energy.argmax(1)
    return torch.stack([index // kernel, index % kernel], 1).long()


def choose_taps(assign: str, energy: torch.Tensor, kernel: int) -> torch.Tensor:
    if assign == "balanced":
        return balanced_taps(energy, kernel)
    if assign == "dominant":
        return dominant_taps(energy, kernel)
    return even_taps(energy.shape[0], kernel)


class Shift(nn.Module):
    """Fixed per-channel integer shift: ``out[c,y,x] = pad(in)[c, ty_c + y*s, tx_c + x*s]``.

    No parameters, no multiplications. ``deploy`` picks the (exact) graph it exports to.
    """

    def __init__(self, channels: int, kernel_size: int, taps: torch.Tensor, stride: int = 1,
                 padding="auto", deploy: str = "onehot_dwconv"):
        super().__init__()
        if taps.shape != (channels, 2):
            raise ValueError(f"taps must be ({channels}, 2), got {tuple(taps.shape)}")
        if deploy not in ("onehot_dwconv", "pad_slice"):
            raise UserError(f"shift deploy form '{deploy}' is not valid; valid: onehot_dwconv, pad_slice")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding == "auto" else padding
        self.deploy = deploy
        self.register_buffer("taps", taps.clone().long())
        # The one-hot kernel is derived from the taps (not saved): a constant initializer on export.
        self.register_buffer("onehot", onehot_weight(self.taps, kernel_size), persistent=False)
        self._plan = None

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel={self.kernel_size}, stride={self.stride}, padding={self.padding}, deploy={self.deploy}"

    def pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            height, width = int(x.shape[-2]), int(x.shape[-1])
        return conv_pads(height, width, self.kernel_size, self.stride, self.padding)

    def slice_plan(self):
        """Tap groups in concat order and the inverse permutation (None when contiguous)."""
        if self._plan is None:
            taps = [tuple(t) for t in self.taps.tolist()]
            order = sorted(range(self.channels), key=lambda c: (taps[c], c))
            groups: list[tuple[int, int, list[int]]] = []
            for c in order:
                if groups and (groups[-1][0], groups[-1][1]) == taps[c]:
                    groups[-1][2].append(c)
                else:
                    groups.append((taps[c][0], taps[c][1], [c]))
            contiguous = order == list(range(self.channels))
            inverse = None
            if not contiguous:
                inverse = [0] * self.channels
                for position, c in enumerate(order):
                    inverse[c] = position
            self._plan = (groups, inverse)
        return self._plan

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._plan = None
        self.onehot = onehot_weight(self.taps, self.kernel_size, self.onehot.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self.pads(x)
        if self.deploy == "onehot_dwconv":
            weight = self.onehot if self.onehot.dtype == x.dtype else self.onehot.to(x.dtype)
            return shift_onehot(x, weight, self.stride, pads)
        groups, inverse = self.slice_plan()
        return shift_pad_slice(x, groups, inverse, self.kernel_size, self.stride, pads)

    def to_conv(self) -> nn.Module:
        """The shift as a frozen plain depthwise ``nn.Conv2d`` (for passes that only know convs).

        A one-hot kernel of 1.0 is reproduced exactly by an 8-bit per-channel weight quantizer.
        """
        conv = nn.Conv2d(self.channels, self.channels, self.kernel_size, self.stride,
                         0 if self.padding == "same" else self.padding, groups=self.channels, bias=False)
        conv.weight.data.copy_(self.onehot.cpu())
        conv.weight.requires_grad_(False)
        if self.padding == "same":
            from edgecnn.models.layers import SamePadConv2d

            conv = SamePadConv2d.from_conv(conv)
            conv.weight.requires_grad_(False)
        return conv.to(self.taps.device)


class ActiveShift(nn.Module):
    """Learnable real per-channel offsets (active shift).

    Training: bilinear interpolation at the real offsets, or (``ste=True``) the offsets
    rounded to integers in the forward with a straight-through gradient (central difference),
    so the network trained is the one deployed. Evaluation always uses the rounded offsets,
    i.e. exactly :meth:`freeze`'s :class:`Shift`. :meth:`l1_penalty` is the sparsity term.
    """

    def __init__(self, channels: int, kernel_size: int, taps: torch.Tensor, stride: int = 1, padding="auto",
                 deploy: str = "onehot_dwconv", ste: bool = True, max_offset: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding == "auto" else padding
        self.deploy = deploy
        self.ste = ste
        # Offsets stay inside the replaced kernel, so the deployed shift pads as the conv did.
        self.max_offset = kernel_size // 2 if max_offset is None else min(max_offset, kernel_size // 2)
        centre = kernel_size // 2
        self.offset = nn.Parameter((taps.float() - centre).clone())  # (C, 2) real (dy, dx) around the centre tap

    def extra_repr(self) -> str:
        return f"{self.channels}, kernel={self.kernel_size}, stride={self.stride}, ste={self.ste}, deploy={self.deploy}"

    def l1_penalty(self) -> torch.Tensor:
        return self.offset.abs().sum()

    def rounded_taps(self) -> torch.Tensor:
        centre = self.kernel_size // 2
        return (self.offset.detach().clamp(-self.max_offset, self.max_offset).round().long() + centre)

    def freeze(self) -> Shift:
        """The deployed integer shift (rounded offsets)."""
        return Shift(self.channels, self.kernel_size, self.rounded_taps(), self.stride, self.padding,
                     self.deploy).to(self.offset.device)

    def _integer_shift(self, padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Gather ``padded[:, c, rows[c], cols[c]]`` with per-channel integer index vectors."""
        channel = torch.arange(self.channels, device=padded.device)
        return padded[:, channel[:, None, None], rows[:, :, None], cols[:, None, :]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.freeze()(x)
        height, width = x.shape[-2:]
        left, right, top, bottom = conv_pads(height, width, self.kernel_size, self.stride, self.padding)
        out_h = _out_size(height, top, bottom, self.kernel_size, self.stride)
        out_w = _out_size(width, left, right, self.kernel_size, self.stride)
        margin = self.max_offset + 2  # room for the interpolation / difference neighbours
        padded = F.pad(x, (margin, margin, margin, margin))
        centre = self.kernel_size // 2
        base_y = torch.arange(out_h, device=x.device) * self.stride + (centre - top) + margin
        base_x = torch.arange(out_w, device=x.device) * self.stride + (centre - left) + margin
        offset = self.offset.clamp(-self.max_offset, self.max_offset)
        if self.ste:
            integer = offset.detach().round().long()
            delta = offset - offset.detach()  # value 0, gradient 1
            rows = base_y[None, :] + integer[:, 0:1]
            cols = base_x[None, :] + integer[:, 1:2]
            out = self._integer_shift(padded, rows, cols)
            grad_y = (self._integer_shift(padded, rows + 1, cols) - self._integer_shift(padded, rows - 1, cols)) / 2
            grad_x = (self._integer_shift(padded, rows, cols + 1) - self._integer_shift(padded, rows, cols - 1)) / 2
            return out + delta[None, :, 0, None, None] * grad_y + delta[None, :, 1, None, None] * grad_x
        floor = offset.detach().floor()
        frac = offset - floor  # gradient flows through the interpolation weights
        fy, fx = floor.long()[:, 0:1], floor.long()[:, 1:2]
        rows, cols = base_y[None, :] + fy, base_x[None, :] + fx
        wy = frac[None, :, 0, None, None]
        wx = frac[None, :, 1, None, None]
        return ((1 - wy) * (1 - wx) * self._integer_shift(padded, rows, cols)
                + (1 - wy) * wx * self._integer_shift(padded, rows, cols + 1)
                + wy * (1 - wx) * self._integer_shift(padded, rows + 1, cols)
                + wy * wx * self._integer_shift(padded, rows + 1, cols + 1))


def l1_penalty(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of |offset| over the active shifts of ``model``; None when it has none."""
    terms = [m.l1_penalty() for m in model.modules() if isinstance(m, ActiveShift)]
    return torch.stack(terms).sum() if terms else None


def freeze_shifts(model: nn.Module, deploy: Optional[str] = None, as_conv: bool = False) -> nn.Module:
    """Round every active shift to a fixed :class:`Shift` (in place); optionally set the deploy
    form, or turn each shift into a plain frozen one-hot depthwise ``nn.Conv2d``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ActiveShift):
                child = child.freeze()
                setattr(parent, name, child)
            if isinstance(child, Shift):
                if deploy is not None:
                    child.deploy = deploy
                if as_conv:
                    setattr(parent, name, child.to_conv())
    return model


# ---------------------------------------------------------------------------------------
# The pass


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
