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

Modules: :mod:`~edgecnn.passes.shift.ops` (the shift modules and their two exact export
forms), :mod:`~edgecnn.passes.shift.offsets` (which channel takes which offset),
:mod:`~edgecnn.passes.shift.replace` (the pass, registered as ``shift``).
"""

from edgecnn.passes.shift.offsets import balanced_taps, choose_taps, dominant_taps, even_taps
from edgecnn.passes.shift.ops import (
    ActiveShift,
    DeployForm,
    Shift,
    conv_pads,
    deploy_form_for,
    freeze_shifts,
    l1_penalty,
    onehot_weight,
    reference_shift,
    shift_onehot,
    shift_pad_slice,
)
from edgecnn.passes.shift.replace import ShiftConfig, shift_pass

__all__ = [
    "ActiveShift", "DeployForm", "Shift", "ShiftConfig", "balanced_taps", "choose_taps", "conv_pads",
    "deploy_form_for", "dominant_taps", "even_taps", "freeze_shifts", "l1_penalty", "onehot_weight",
    "reference_shift", "shift_onehot", "shift_pad_slice", "shift_pass",
]
