"""Fold BatchNorm into the conv or linear layer that feeds it (inference only).

The conv that feeds each BatchNorm is found with torch.fx, so folding works through residual
adds, concats and channel shuffles; the model keeps its own module hierarchy and names: the
conv gets the folded weight and bias, the BatchNorm becomes ``nn.Identity``. A model fx cannot
trace falls back to the one pairing that needs no graph: a conv directly followed by its
BatchNorm inside an ``nn.Sequential``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgecnn.errors import UserError
from edgecnn.passes.registry import PassConfig, PassReport, register_pass
from edgecnn.models.layer_select import layer_kind


class FoldBNConfig(PassConfig):
    """``require_all``: fail when some BatchNorm cannot be folded (instead of reporting it)."""

    require_all: bool = False


class LayerTracer(fx.Tracer):
    """fx tracer that keeps every conv, linear and BatchNorm (subclasses included) as one call.

    Subclasses such as edgecnn's ``SamePadConv2d`` or quantized convs have forwards fx
    cannot trace through (they read input sizes); as leaves they need not be.
    """

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, _BatchNorm)):
            return True
        return super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` keeping conv/linear/BatchNorm as leaves (raises on failure)."""
    graph = LayerTracer().trace(model)
    return fx.GraphModule(model, graph)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _bn_pairs_fx(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(layer name, bn name) pairs from the fx graph, and bn name -> why it cannot be folded."""
    graph = trace(model).graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, skipped = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _BatchNorm):
            continue
        bn_name = node.target
        source = node.args[0] if node.args else None
        if calls[bn_name] > 1:
            skipped[bn_name] = "BatchNorm module called more than once"
        elif not isinstance(source, fx.Node) or source.op != "call_module":
            skipped[bn_name] = "input is not produced by a conv or linear layer"
        elif layer_kind(model.get_submodule(source.target)) is None:
            skipped[bn_name] = f"input comes from {type(model.get_submodule(source.target)).__name__}, not a conv/linear"
        elif len(source.users) > 1:
            skipped[bn_name] = f"output of {source.target} is also used elsewhere"
        elif calls[source.target] > 1:
            skipped[bn_name] = f"{source.target} is called more than once"
        else:
            pairs.append((source.target, bn_name))
    return pairs, skipped


def _bn_pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """Conv/linear directly followed by a BatchNorm in an nn.Sequential: data flow is certain."""
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (first_name, first), (second_name, second) in zip(children, children[1:]):
            if layer_kind(first) is not None and isinstance(second, _BatchNorm):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + first_name, prefix + second_name))
    return pairs


def _fold_reason(layer: nn.Module, bn: _BatchNorm) -> Optional[str]:
    if not bn.track_running_stats or bn.running_mean is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
        return "linear layer followed by a non-1d BatchNorm"
    if isinstance(layer, nn.Conv2d) and not isinstance(bn, nn.BatchNorm2d):
        return "conv2d followed by a non-2d BatchNorm"
    out_features = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    if bn.num_features != out_features:
        return f"BatchNorm has {bn.num_features} features, layer gives {out_features}"
    return None


@torch.no_grad()
def fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    """Scale ``layer``'s output channels and shift its bias so that layer = bn(layer) in eval mode.

    Computed in float64 so that an identity BatchNorm (var + eps == 1, weight 1) leaves the
    weights bit-exact and only moves the bias.
    """
    weight = layer.weight
    gamma = bn.weight.double() if bn.weight is not None else torch.ones(bn.num_features, dtype=torch.float64, device=weight.device)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(gamma)
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    old_bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(gamma)
    new_bias = (old_bias - bn.running_mean.double()) * scale + beta
    shape = (-1,) + (1,) * (weight.dim() - 1)  # output channels are dim 0 for conv and linear
    weight.copy_((weight.double() * scale.view(shape)).to(weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.to(weight.dtype))
    else:
        layer.bias.copy_(new_bias.to(layer.bias.dtype))


def fold_batchnorm(model: nn.Module, require_all: bool = False) -> tuple[nn.Module, list[dict]]:
    """Fold every foldable BatchNorm of ``model`` in place; returns (model, per-BN report rows)."""
    try:
        pairs, skipped = _bn_pairs_fx(model)
        method = "fx"
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the safe fallback
        pairs, skipped, method = _bn_pairs_sequential(model), {}, f"sequential (fx trace failed: {type(exc).__name__})"
        paired = {bn for _, bn in pairs}
        for name, module in model.named_modules():
            if isinstance(module, _BatchNorm) and name not in paired:
                skipped[name] = "model not traceable and BatchNorm not right after a layer in an nn.Sequential"
    rows = []
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        reason = _fold_reason(layer, bn)
        if reason:
            skipped[bn_name] = reason
            continue
        fold_into(layer, bn)
        _set_submodule(model, bn_name, nn.Identity())
        rows.append({"bn": bn_name, "into": layer_name, "kind": layer_kind(layer), "channels": bn.num_features, "status": "folded", "method": method})
    for bn_name, reason in skipped.items():
        rows.append({"bn": bn_name, "into": "", "kind": "", "channels": model.get_submodule(bn_name).num_features, "status": f"kept: {reason}", "method": method})
    if require_all and skipped:
        name, reason = next(iter(skipped.items()))
        raise UserError(f"fold_bn: BatchNorm '{name}' cannot be folded ({reason}); set require_all: false to keep it")
    return model, rows


@register_pass("fold_bn", config=FoldBNConfig, not_after=("quantize", "shift", "weight_share"))
def fold_bn(model: nn.Module, config: FoldBNConfig, ctx) -> nn.Module:
    """Fold BatchNorm into the preceding conv/linear layer (eval-mode outputs unchanged)."""
    model, rows = fold_batchnorm(model, require_all=config.require_all)
    folded = sum(r["status"] == "folded" for r in rows)
    ctx.report(PassReport("fold_bn", rows=rows, summary={"folded": folded, "kept": len(rows) - folded}))
    return model
