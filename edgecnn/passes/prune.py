"""Weight pruning with masks: unstructured magnitude (global or per layer) and 2:4 sparsity.

Masks are boolean buffers named ``weight_mask`` on the pruned conv/linear modules, and the
weights themselves are zeroed in place. The weight stays a plain ``nn.Parameter``, so
deepcopy, ``state_dict`` save/load and ONNX export see ordinary weights with zeros (the
mask is never used in ``forward``, so the exported graph has no mask ops). Training code
calls :func:`reapply_masks` after each optimizer step to keep pruned weights at zero.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from edgecnn.errors import UserError
from edgecnn.passes.registry import PassConfig, PassReport, register_pass
from edgecnn.passes.schedules import SCHEDULES
from edgecnn.models.layer_select import layer_kind, select_layers

MASK = "weight_mask"


def _check_density(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} {value} is out of range; use a fraction of weights kept between 0 and 1")
    return value


class PruneConfig(PassConfig):
    """How much of which layers to keep.

    ``mode``: ``unstructured`` (magnitude) or ``2:4`` (keep 2 of every 4 input-channel weights).
    ``density``: fraction of weights kept, for every selected layer not in ``schedule``
    (``scope: layer``) or over all of them together (``scope: global``).
    ``schedule``: ``{module name or glob: density}`` (later entries win) or the name of a
    schedule in ``edgecnn.passes.schedules.SCHEDULES``; scheduled layers keep exactly their
    own density, also in global scope. ``include``/``exclude``/``kinds`` select layers.
    """

    mode: Literal["unstructured", "2:4"] = "unstructured"
    density: Optional[float] = None
    scope: Literal["layer", "global"] = "layer"
    schedule: Union[None, str, dict[str, float]] = None
    include: Optional[list[str]] = None
    exclude: Optional[list[str]] = None
    kinds: Optional[list[Literal["conv", "depthwise", "pointwise", "group", "linear"]]] = None
    # Refit each pruned layer's kept weights to its unpruned output on the calibration images
    # (edgecnn.passes.reconstruct): one-shot pruning loses far less before any fine-tuning.
    reconstruct: bool = False
    reconstruct_images: int = Field(64, ge=1, description="calibration images the layers' input statistics come from")

    @field_validator("density")
    @classmethod
    def _density_range(cls, value):
        return value if value is None else _check_density(value, "density")

    @field_validator("schedule")
    @classmethod
    def _schedule_values(cls, value):
        if isinstance(value, str):
            if value not in SCHEDULES:
                raise ValueError(f"unknown schedule '{value}'; valid: {', '.join(SCHEDULES)}")
            return value
        for pattern, density in (value or {}).items():
            _check_density(density, f"density of '{pattern}'")
        return value

    def check_target(self) -> None:
        """Cross-field checks, as one-line UserErrors (pydantic would print an empty field name)."""
        if self.mode == "unstructured" and self.density is None and not self.schedule:
            raise UserError("prune: unstructured pruning needs 'density' or 'schedule'; e.g. density: 0.5")
        if self.scope == "global" and self.density is None:
            raise UserError("prune: global pruning needs 'density' (the fraction kept over all selected layers)")

    def schedule_dict(self) -> dict[str, float]:
        return SCHEDULES[self.schedule] if isinstance(self.schedule, str) else dict(self.schedule or {})


# ---------------------------------------------------------------- masks


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> boolean mask (True = kept) for every module carrying a ``weight_mask``."""
    return {name: getattr(m, MASK) for name, m in model.named_modules() if isinstance(getattr(m, MASK, None), torch.Tensor)}


def _masked_weight(module: nn.Module) -> torch.Tensor:
    # Modules pruned with torch.nn.utils.prune keep the trainable tensor as weight_orig.
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


@torch.no_grad()
def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Attach ``mask`` (combined with any existing one) and zero the pruned weights."""
    mask = mask.to(device=module.weight.device, dtype=torch.bool)
    old = getattr(module, MASK, None)
    if isinstance(old, torch.Tensor):
        mask = mask & old.to(torch.bool)
        setattr(module, MASK, mask)
    else:
        module.register_buffer(MASK, mask)
    _masked_weight(module).mul_(mask)


@torch.no_grad()
def reapply_masks(model: nn.Module) -> int:
    """Zero every masked weight again; call after each optimizer step. Returns layers touched.

    A no-op on a model without masks. A mask whose shape no longer matches its weight
    (channels removed since) is rebuilt from the weight's zeros.
    """
    touched = 0
    for module in model.modules():
        mask = getattr(module, MASK, None)
        if not isinstance(mask, torch.Tensor):
            continue
        weight = _masked_weight(module)
        if mask.shape != weight.shape:
            mask = weight != 0
            setattr(module, MASK, mask)
        weight.mul_(mask.to(weight.dtype))
        touched += 1
    return touched


def apply_masks(model: nn.Module, masks: Optional[dict[str, torch.Tensor]] = None) -> int:
    """Attach ``masks`` ({module name: bool tensor}) if given, then zero masked weights.

    With a state dict saved from a pruned model, ``apply_masks(model, {k[:-12]: v for k, v
    in sd.items() if k.endswith('.weight_mask')})`` before ``load_state_dict`` restores the
    buffers; see :func:`load_pruned_state_dict`.
    """
    for name, mask in (masks or {}).items():
        module = model.get_submodule(name)
        if mask.shape != module.weight.shape:
            raise UserError(f"mask for '{name}' has shape {tuple(mask.shape)}, weight has {tuple(module.weight.shape)}; the mask is from another model")
        set_mask(module, mask)
    return reapply_masks(model)


def load_pruned_state_dict(model: nn.Module, state_dict: dict, strict: bool = True):
    """``load_state_dict`` that first creates the ``weight_mask`` buffers the state dict holds."""
    masks = {k[: -len(MASK) - 1]: v for k, v in state_dict.items() if k.endswith("." + MASK)}
    for name, mask in masks.items():
        module = model.get_submodule(name)
        if not isinstance(getattr(module, MASK, None), torch.Tensor):
            module.register_buffer(MASK, torch.ones_like(mask, dtype=torch.bool))
    result = model.load_state_dict(state_dict, strict=strict)
    reapply_masks(model)
    return result


def remove_masks(model: nn.Module) -> int:
    """Drop the mask buffers (weights keep their zeros), e.g. before handing the model on."""
    removed = 0
    for module in model.modules():
        if isinstance(getattr(module, MASK, None), torch.Tensor) and not hasattr(module, "weight_orig"):
            del module._buffers[MASK]
            removed += 1
    return removed


# ---------------------------------------------------------------- mask computation


def keep_count(density: float, numel: int) -> int:
    """Weights kept at ``density``: round half up, so a layer's density is exact to one weight."""
    return min(numel, int(math.floor(density * numel + 0.5)))


def magnitude_mask(weights: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` largest |w|; ties go to the lower flat index."""
    flat = weights.detach().abs().flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask.view_as(weights)


def n_m_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive input-channel weights.

    Conv weights (out, in/groups, kh, kw) are grouped along the input-channel dim at each
    (out, kh, kw), the layout TensorRT's sparse kernels expect; linear weights along ``in``.
    """
    w = weight.detach().abs()
    moved = w.movedim(1, -1)  # (out, kh, kw, in): input channels innermost
    groups = moved.reshape(-1, m)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return keep.view(moved.shape).movedim(-1, 1)


def _schedule_density(name: str, schedule: dict[str, float]) -> Optional[float]:
    density = None
    for pattern, value in schedule.items():  # later entries override earlier ones
        if fnmatch.fnmatchcase(name, pattern):
            density = value
    return density


def _selected(model: nn.Module, config: PruneConfig) -> list[tuple[str, nn.Module]]:
    layers = select_layers(model, config.include, config.exclude, config.kinds)
    schedule = config.schedule_dict()
    if schedule:
        names = [n for n, _ in layers]
        all_names = [n for n, m in model.named_modules() if layer_kind(m) is not None]
        for pattern in schedule:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                where = "no selected layer" if any(fnmatch.fnmatchcase(n, pattern) for n in all_names) else "no layer"
                sample = ", ".join(all_names[:6]) + (", ..." if len(all_names) > 6 else "")
                raise UserError(f"prune schedule entry '{pattern}' matches {where}; layer names look like: {sample}")
    return layers


def _row(name: str, module: nn.Module, target: Optional[float], note: str = "") -> dict:
    weight = _masked_weight(module)
    nonzero = int(torch.count_nonzero(weight))
    return {
        "layer": name,
        "kind": layer_kind(module),
        "weights": weight.numel(),
        "target_density": None if target is None else round(target, 6),
        "nonzero": nonzero,
        "density": round(nonzero / weight.numel(), 6),
        "note": note,
    }


def prune_unstructured(model: nn.Module, config: PruneConfig) -> list[dict]:
    schedule = config.schedule_dict()
    layers = _selected(model, config)
    fixed, ranked = [], []
    for name, module in layers:
        density = _schedule_density(name, schedule)
        if density is not None:
            fixed.append((name, module, density))
        elif config.density is not None:
            ranked.append((name, module))
    rows = []
    for name, module, density in fixed:
        set_mask(module, magnitude_mask(_masked_weight(module), keep_count(density, module.weight.numel())))
        rows.append(_row(name, module, density, "schedule"))
    if config.scope == "layer":
        for name, module in ranked:
            set_mask(module, magnitude_mask(_masked_weight(module), keep_count(config.density, module.weight.numel())))
            rows.append(_row(name, module, config.density, "density"))
    elif ranked:
        # One magnitude ranking over all layers (Han et al.): layers end at different densities.
        flat = torch.cat([_masked_weight(m).detach().flatten() for _, m in ranked])
        keep = magnitude_mask(flat, keep_count(config.density, flat.numel()))
        start = 0
        for name, module in ranked:
            count = module.weight.numel()
            set_mask(module, keep[start : start + count].view_as(module.weight))
            start += count
            rows.append(_row(name, module, None, f"global {config.density}"))
    return rows


def prune_2_4(model: nn.Module, config: PruneConfig) -> list[dict]:
    rows = []
    for name, module in _selected(model, config):
        weight = _masked_weight(module)
        if weight.dim() < 2 or weight.shape[1] % 4:
            rows.append(_row(name, module, None, f"skipped: {weight.shape[1]} input channels per group, not a multiple of 4"))
            continue
        set_mask(module, n_m_mask(weight, 2, 4))
        rows.append(_row(name, module, 0.5, "2:4"))
    return rows


def calibration_images(batches, images: int):
    """Input tensors from ``batches`` (as the quantizer's calibration reads them), ``images`` in all at most."""
    from edgecnn.passes.quant.calibrate import iterate_batches

    seen = 0
    for batch in iterate_batches(batches):
        batch = batch[: images - seen]
        if len(batch):
            yield batch
        seen += len(batch)
        if seen >= images:
            return


def reconstruct_layers(model: nn.Module, layers: list[tuple[str, nn.Module]], grams: dict, originals: dict, rows: list[dict]) -> None:
    """Refit every pruned layer's kept weights (its mask unchanged) and note in its row how
    much of magnitude pruning's output error on the calibration images remains."""
    from edgecnn.passes.reconstruct import output_error, refit_kept

    by_name = {row["layer"]: row for row in rows}
    for name, module in layers:
        mask = getattr(module, MASK, None)
        if name not in by_name or not isinstance(mask, torch.Tensor) or bool(mask.all()):
            continue
        original, weight = originals[name], _masked_weight(module)
        before = output_error(original, weight, grams[name])
        with torch.no_grad():
            weight.copy_(refit_kept(original, mask, grams[name]))
        after = output_error(original, weight, grams[name])
        by_name[name]["output_error_left"] = round(after / before, 4) if before > 0 else 0.0


@register_pass("prune", config=PruneConfig, not_after=("quantize", "shift", "weight_share"))
def prune(model: nn.Module, config: PruneConfig, ctx) -> nn.Module:
    """Magnitude pruning (unstructured, global or per layer, or 2:4) with persistent masks."""
    config.check_target()
    grams, originals = None, {}
    if config.reconstruct:
        if ctx.calib_batches is None:
            raise UserError("prune with reconstruct: true needs calibration images; pass --calib DIR")
        from edgecnn.passes.reconstruct import input_grams

        layers = _selected(model, config)
        grams = input_grams(model, layers, calibration_images(ctx.calib_batches, config.reconstruct_images))
        if not grams:
            raise UserError("prune with reconstruct: true found no calibration images; give --calib a folder with images")
        originals = {name: _masked_weight(module).detach().clone() for name, module in layers}
    rows = prune_2_4(model, config) if config.mode == "2:4" else prune_unstructured(model, config)
    if grams is not None:
        reconstruct_layers(model, layers, grams, originals, rows)
    params = sum(p.numel() for p in model.parameters())
    nonzero = int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    masked_out = sum(int((~mask).sum()) for mask in get_masks(model).values())
    pruned = [r for r in rows if not r["note"].startswith("skipped")]
    summary = {
        "mode": config.mode,
        "layers_pruned": len(pruned),
        "layers_skipped": len(rows) - len(pruned),
        "params": params,
        "nonzero_params": nonzero,
        "kept_params": params - masked_out,  # parameters not masked out (zero-initialised biases count)
        "density": round(nonzero / params, 6) if params else 1.0,
        "reconstructed": config.reconstruct,
    }
    ctx.report(PassReport("prune", rows=rows, summary=summary))
    return model
