"""Distillation losses: Hinton's soft-target loss and FitNets-style feature matching."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor],
            temperature: float, alpha: float) -> tuple[torch.Tensor, dict]:
    """Hinton's distillation loss; labels < 0 (or None) count as unlabelled (soft term only)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)
    parts = {"soft": float(soft.detach())}
    if labels is None or not bool((labels >= 0).any()):
        return soft, parts
    hard = F.cross_entropy(student_logits, labels, ignore_index=-1)
    parts["hard"] = float(hard.detach())
    return alpha * soft + (1 - alpha) * hard, parts


class FeatureTaps:
    """Forward hooks keeping the outputs of the named modules of one model (one batch)."""

    def __init__(self, model: nn.Module, names: list[str], role: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise UserError(f"feature layer(s) {', '.join(missing)} not found in the {role}; "
                            f"use module names such as {', '.join(list(modules)[1:4])}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name):
        def hook(module, inputs, output):
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def feature_loss(student_features: dict, teacher_features: dict) -> torch.Tensor:
    """Sum over layers of MSE(student, teacher) / mean(teacher^2): scale-free, so early
    high-resolution maps and late ones count alike."""
    total = None
    for name, target in teacher_features.items():
        output = student_features[name]
        if output.shape != target.shape:
            raise UserError(f"feature layer '{name}' has shape {tuple(output.shape)} in the student but "
                            f"{tuple(target.shape)} in the teacher; pick layers whose outputs match")
        term = F.mse_loss(output, target) / target.pow(2).mean().clamp_min(1e-12)
        total = term if total is None else total + term
    return total
