"""The ``channel_prune`` pass: config, importance criteria, Torch-Pruning on the coupled
groups not frozen by the analysis, and the MAC-budget search (see :mod:`edgecnn.passes.channel_prune`).
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Literal, Optional

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from edgecnn.errors import UserError
from edgecnn.lazy import require
from edgecnn.models.layer_select import layer_kind
from edgecnn.models.macs import profile_model
from edgecnn.passes.channel_prune.graph import Analysis, fallback_output_layers
from edgecnn.passes.channel_prune.shuffle import prune_shuffle_spans
from edgecnn.passes.prune import reapply_masks
from edgecnn.passes.registry import PassConfig, PassReport, register_pass


class ChannelPruneConfig(PassConfig):
    """``density``: fraction of channels kept per prunable group (``target: channels``) or of
    the model's conv/linear MACs kept (``target: macs``, found by bisection on a uniform
    channel density). ``overrides``: ``{layer glob: channel density}`` for groups rooted at
    matching layers. ``ignored_layers``: globs whose output channels are kept (the final
    classifier always is). ``round_to``: kept channel counts are multiples of it.
    ``input_size``: tracing/MAC-counting size when the pass context gives no example input.
    """

    target: Literal["channels", "macs"] = "channels"
    density: float = 0.5
    overrides: dict[str, float] = Field(default_factory=dict)
    importance: Literal["l1", "l2", "bn_scale", "fpgm", "lamp", "random"] = "l1"
    round_to: int = Field(default=8, ge=1)
    ignored_layers: list[str] = Field(default_factory=list)
    input_size: int = Field(default=224, ge=16)

    @field_validator("density")
    @classmethod
    def _density_range(cls, value):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"density {value} is out of range; use the fraction kept, above 0 and at most 1")
        return value

    @field_validator("overrides")
    @classmethod
    def _override_range(cls, value):
        for pattern, density in value.items():
            if not 0.0 < density <= 1.0:
                raise ValueError(f"density {density} of '{pattern}' is out of range; use the fraction kept, above 0 and at most 1")
        return value


def make_importance(name: str):
    """The Torch-Pruning importance class for a criterion name (each is its own class there)."""
    tp = require("torch_pruning", "compress")
    imp = tp.importance
    criteria = {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: imp.BNScaleImportance(),
        "fpgm": lambda: imp.FPGMImportance(),
        "lamp": lambda: imp.LAMPImportance(),
        "random": lambda: imp.RandomImportance(),
    }
    return criteria[name]()


def _named(model: nn.Module, patterns: list[str], what: str) -> list[nn.Module]:
    names = [n for n, m in model.named_modules() if layer_kind(m) is not None]
    found = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise UserError(f"channel_prune {what} '{pattern}' matches no layer; layer names look like: {sample}")
        found.extend(model.get_submodule(n) for n in hits)
    return found


def _group_allowed(group, dg, analysis: Optional[Analysis]) -> bool:
    if analysis is None:
        return True
    for dep, _ in group:
        module = dep.target.module
        if module in analysis.frozen:
            return False
        is_out = dg.is_out_channel_pruning_fn(dep.handler)
        if is_out and module in analysis.out_frozen:
            return False
        if not is_out and module in analysis.in_frozen:
            return False
    return True


def _prune_in_place(model: nn.Module, config: ChannelPruneConfig, density: float, example: torch.Tensor) -> dict:
    """Prune ``model``'s layers in place at a uniform channel ``density``; returns counts."""
    tp = require("torch_pruning", "compress")
    try:
        analysis: Optional[Analysis] = Analysis(model, example)
    except Exception:  # noqa: BLE001 - untraceable models go to Torch-Pruning as they are
        analysis = None
    if analysis is not None and analysis.chain_starts:
        traced, store = analysis.cut_copy()

        def forward_fn(module, inputs):
            store.clear()
            return (module(inputs), *store)

    else:
        traced, forward_fn = model, None
    ignored = set(_named(model, config.ignored_layers, "ignored layer"))
    ignored |= analysis.output_layers() if analysis is not None else fallback_output_layers(model)
    if analysis is not None:
        ignored |= analysis.out_frozen | {m for m in analysis.frozen if layer_kind(m) is not None}
    ratio_dict = {}
    for pattern, value in config.overrides.items():
        for module in _named(model, [pattern], "override"):
            ratio_dict[module] = 1.0 - value
    pruner = tp.pruner.MetaPruner(
        traced,
        example,
        importance=make_importance(config.importance),
        pruning_ratio=1.0 - density,
        pruning_ratio_dict=ratio_dict or None,
        ignored_layers=list(ignored),
        round_to=config.round_to if config.round_to > 1 else None,
        forward_fn=forward_fn,
    )
    pruned = skipped = 0
    for group in pruner.step(interactive=True):
        if _group_allowed(group, pruner.DG, analysis):
            group.prune()
            pruned += 1
        else:
            skipped += 1
    user_ignored = set(_named(model, config.ignored_layers, "ignored layer"))
    shuffle_units = prune_shuffle_spans(model, analysis, config, density, user_ignored) if analysis is not None else 0
    return {
        "groups_pruned": pruned,
        "groups_frozen": skipped,
        "shuffle_chains": len(analysis.chain_starts) if analysis else 0,
        "shuffle_units_pruned": shuffle_units,
    }


def _channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            out[name] = (module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            out[name] = (module.in_features, module.out_features)
    return out


def count_macs(model: nn.Module, size: tuple[int, int]) -> dict[str, int]:
    """Conv/linear MACs per layer at batch 1 (edgecnn.models.macs' convention)."""
    return {row.name: row.macs for row in profile_model(model, size).rows}


def channel_prune_model(
    model: nn.Module, config: ChannelPruneConfig, example: Optional[torch.Tensor] = None, progress: bool = False
) -> tuple[nn.Module, list[dict], dict]:
    """Prune ``model`` in place; returns (model, per-layer rows, summary)."""
    if example is None:
        example = torch.zeros(1, 3, config.input_size, config.input_size)
    example = example[:1]
    size = tuple(example.shape[-2:])
    was_training = model.training
    model.eval()
    reapply_masks(model)
    channels_before, macs_before = _channels(model), count_macs(model, size)
    total_before = sum(macs_before.values())
    density = config.density
    if config.target == "macs" and config.density < 1.0:
        density = _density_for_macs(model, config, example, size, total_before, progress)
    counts = _prune_in_place(model, config, density, example)
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"channel_prune: the pruned model no longer runs ({type(exc).__name__}: {exc}); add the layers involved to ignored_layers") from None
    reapply_masks(model)  # masks of pruned layers are rebuilt at their new shapes
    model.train(was_training)
    channels_after, macs_after = _channels(model), count_macs(model, size)
    rows = []
    for name, (cin, cout) in channels_before.items():
        new_in, new_out = channels_after.get(name, (0, 0))
        rows.append(
            {
                "layer": name,
                "kind": layer_kind(model.get_submodule(name)),
                "in_before": cin,
                "in_after": new_in,
                "out_before": cout,
                "out_after": new_out,
                "macs_before": macs_before.get(name, 0),
                "macs_after": macs_after.get(name, 0),
            }
        )
    total_after = sum(macs_after.values())
    summary = {
        "target": config.target,
        "density": config.density,
        "channel_density_used": round(density, 4),
        "round_to": config.round_to,
        "input_size": list(size),
        "macs_before": total_before,
        "macs_after": total_after,
        "macs_ratio": round(total_after / total_before, 4) if total_before else 1.0,
        "params_after": sum(p.numel() for p in model.parameters()),
        **counts,
    }
    return model, rows, summary


def _density_for_macs(model, config, example, size, total_before, progress: bool = False) -> float:
    """Uniform channel density whose pruned model keeps about ``config.density`` of the MACs."""
    from rich.progress import Progress

    low, high = 0.05, 1.0  # kept MACs at ``high`` exceed the target; at ``low`` they should not
    trials = 7
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"channel_prune: searching {config.density:.0%} of MACs", total=trials)
        for _ in range(trials):
            mid = (low + high) / 2
            trial = copy.deepcopy(model)
            _prune_in_place(trial, config, mid, example)
            if sum(count_macs(trial, size).values()) / total_before > config.density:
                high = mid
            else:
                low = mid
            bar.advance(task)
    return low


@register_pass("channel_prune", config=ChannelPruneConfig, not_after=("quantize", "shift", "weight_share"))
def channel_prune(model: nn.Module, config: ChannelPruneConfig, ctx) -> nn.Module:
    """Remove whole channels (Torch-Pruning + shuffle-aware freezing); returns a smaller model."""
    example = getattr(ctx, "example_input", None)
    if isinstance(example, (list, tuple)):
        example = example[0]
    model, rows, summary = channel_prune_model(model, config, example, progress=getattr(ctx, "progress", False))
    ctx.report(PassReport("channel_prune", rows=rows, summary=summary))
    return model
