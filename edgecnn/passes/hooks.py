"""What a transformed model needs while it is trained, as plain callables for the trainer.

``edgecnn.train`` knows no pass: whoever starts a distillation builds these from the model
(what the passes left in it) and hands them to ``distill(after_step=..., regularizers=...)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from edgecnn.passes.prune import MASK, reapply_masks
from edgecnn.passes.shift import ActiveShift, l1_penalty
from edgecnn.passes.weight_share import shared_layers, tie_to_centroids


def after_step_hooks(model: nn.Module) -> list[Callable[[nn.Module], None]]:
    """Run after each optimizer step: pruned weights back to zero, then shared weights back
    on their centroids. Only what ``model`` carries (masks, shared layers)."""
    hooks = []
    if any(isinstance(getattr(m, MASK, None), torch.Tensor) for m in model.modules()):
        hooks.append(reapply_masks)
    if shared_layers(model):
        hooks.append(tie_to_centroids)
    return hooks


def regularizers(model: nn.Module, shift_l1: float = 0.0) -> list[Callable[[nn.Module], Optional[torch.Tensor]]]:
    """Weighted loss terms: ``shift_l1`` times the mean |offset| of the active shifts
    (``DistillConfig.shift_l1``); empty when the weight is 0 or the model has no active shift."""
    offsets = sum(m.offset.numel() for m in model.modules() if isinstance(m, ActiveShift))
    if not (shift_l1 and offsets):
        return []

    def shift_penalty(student: nn.Module) -> Optional[torch.Tensor]:
        return shift_l1 * l1_penalty(student) / offsets

    return [shift_penalty]
