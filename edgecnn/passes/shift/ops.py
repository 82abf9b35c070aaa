"""Shift operations: a fixed integer :class:`Shift`, a learnt :class:`ActiveShift`, and the
functional forms they compute and export to (see :mod:`edgecnn.passes.shift`).

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
