"""Which layers a pass touches, as data: module-name globs and layer kinds.

Every pass that selects layers (prune, quantize, shift) takes the same ``include`` /
``exclude`` glob lists, so a recipe can say ``include: ["features.*"]`` once and mean the
same thing everywhere. A glob that matches nothing is an error (a typo in a schedule must
not silently do nothing).
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

from edgecnn.errors import UserError


def layer_kind(module: nn.Module) -> Optional[str]:
    """conv / depthwise / pointwise / group / linear, or None for layers without weights we count."""
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "pointwise" if module.kernel_size == (1, 1) else "conv"
        if module.groups == module.in_channels and module.out_channels % module.in_channels == 0:
            return "depthwise"
        return "group"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def unknown_weight_layers(model: nn.Module) -> list[dict]:
    """Layers with a weight matrix or kernel that no pass knows (Conv3d, ConvTranspose2d, ...):
    ``[{"layer": name, "kind": class name}]``. Passes leave them alone; reports list them."""
    out = []
    for name, module in model.named_modules():
        if layer_kind(module) is not None or any(True for _ in module.children()):
            continue
        if type(module).__module__.startswith("edgecnn."):  # edgecnn's own (quantizers, shift layers)
            continue
        if any(p.ndim >= 2 for p in module.parameters(recurse=False)):
            out.append({"layer": name, "kind": type(module).__name__})
    return out


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(
    model: nn.Module,
    include: Optional[list[str]] = None,
    exclude: Optional[list[str]] = None,
    kinds: Optional[Iterable[str]] = None,
    strict: bool = True,
) -> list[tuple[str, nn.Module]]:
    """Named conv/linear layers matching ``include`` (default all), minus ``exclude``.

    With ``strict``, a pattern in ``include`` or ``exclude`` that matches no layer raises a
    UserError listing a few valid names.
    """
    layers = [(n, m) for n, m in model.named_modules() if layer_kind(m) is not None]
    if kinds is not None:
        kinds = set(kinds)
        layers = [(n, m) for n, m in layers if layer_kind(m) in kinds]
    names = [n for n, _ in layers]
    if strict:
        for pat in list(include or []) + list(exclude or []):
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise UserError(f"layer pattern '{pat}' matches no layer; layer names look like: {sample}")
    if include:
        layers = [(n, m) for n, m in layers if matches(n, include)]
    if exclude:
        layers = [(n, m) for n, m in layers if not matches(n, exclude)]
    return layers


def block_outputs(model: nn.Module) -> list[str]:
    """Names of the model's blocks, in forward order: the outermost modules that sit in an
    ``nn.Sequential`` and hold two or more convs (a Fire module, an inverted residual, a
    ResNet basic block), not the single-conv stem or head. Their outputs are where feature
    distillation matches a student to its teacher (SqueezeNet 1.1: ``features.3`` ...
    ``features.12``; MobileNetV2: ``features.1`` ... ``features.17``)."""
    names, taken = [], []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential) or any(parent_name.startswith(t + ".") for t in taken):
            continue
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if sum(isinstance(m, nn.Conv2d) for m in child.modules()) >= 2:
                names.append(name)
                taken.append(name)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(names, key=order.__getitem__)


def visit_layer_inputs(model: nn.Module, layers: list[tuple[str, nn.Module]], batches: Iterable,
                       visit: Callable[[str, nn.Module, torch.Tensor], None]) -> None:
    """Run ``model`` in eval mode without gradients over ``batches``, calling ``visit(name, module,
    input)`` with the input each of ``layers`` receives; hooks are removed and the model's mode
    restored afterwards, also on error."""
    def hook(name):
        return lambda module, args: visit(name, module, args[0].detach())

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
