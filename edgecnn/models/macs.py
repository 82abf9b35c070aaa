"""Parameters and multiply-accumulates (MACs) of a PyTorch model, per layer and per layer kind.

MACs are counted for conv and linear layers at batch 1 with forward hooks, the convention of
the MobileNet/ShuffleNet papers (elementwise ops, BN, pooling and activations are not counted).
Convolutions of any dimension and transposed ones count too; any other layer with a weight
matrix or kernel is listed in ``Profile.skipped`` rather than silently left out of the total.
The per-kind table is MobileNet's "resource per layer type" table.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import torch
import torch.nn as nn

from edgecnn.models.layer_select import layer_kind

KIND_ORDER = ("conv", "depthwise", "pointwise", "group", "linear", "conv1d", "conv3d", "transposed")


@dataclass
class LayerRow:
    name: str
    kind: str
    out_shape: tuple
    params: int
    macs: int


@dataclass
class Profile:
    params: int  # all parameters of the model (BatchNorm included)
    macs: int  # conv + linear multiply-accumulates at batch 1
    rows: list[LayerRow] = field(default_factory=list)
    by_kind: dict = field(default_factory=dict)  # kind -> {"layers", "params", "macs"}
    input_size: tuple = (224, 224)
    nonzero_params: int = 0  # parameters that are not exactly zero (pruned models)
    skipped: list = field(default_factory=list)  # {"layer", "kind"}: layers with weights not counted

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows"] = [asdict(r) | {"out_shape": list(r.out_shape)} for r in self.rows]
        out["input_size"] = list(self.input_size)
        return out


def mac_kind(module: nn.Module) -> Optional[str]:
    """The kind a layer's MACs are counted under, or None when they are not counted."""
    kind = layer_kind(module)
    if kind is not None:
        return kind
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed"
    if isinstance(module, (nn.Conv1d, nn.Conv3d)):
        return "conv1d" if isinstance(module, nn.Conv1d) else "conv3d"
    return None


def _layer_macs(module: nn.Module, inputs, output: torch.Tensor) -> int:
    per_sample = output[0].numel() if output.dim() > 1 else output.numel()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # Every input element is scattered through (out_channels / groups) kernels.
        x = inputs[0]
        return (x[0].numel() if x.dim() > 1 else x.numel()) * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvNd):
        return per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return per_sample * module.in_features  # nn.Linear: each output sums in_features products


def _skipped_layers(model: nn.Module) -> list[dict]:
    """Layers holding a weight matrix or kernel whose MACs this counter does not know."""
    out = []
    for name, module in model.named_modules():
        if mac_kind(module) is None and any(p.ndim >= 2 for p in module.parameters(recurse=False)):
            out.append({"layer": name, "kind": type(module).__name__})
    return out


def _layer_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def profile_model(model: nn.Module, input_size: Union[int, tuple[int, int]] = 224) -> Profile:
    """Run one batch-1 forward of zeros and count params and MACs per conv/linear layer.

    Works on models built on the ``meta`` device too (cheap to build: no weight init): they
    are run as a copy with uninitialised CPU weights, since only shapes matter here.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if any(p.is_meta for p in model.parameters()):
        # A meta forward goes through Python decompositions (~1 s); an uninitialised CPU copy
        # runs in milliseconds and gives the same shapes.
        runnable = copy.deepcopy(model).to_empty(device="cpu")
        with torch.no_grad():
            for tensor in list(runnable.parameters()) + list(runnable.buffers()):
                tensor.zero_()  # uninitialised memory may hold denormals, which are very slow
        profile = profile_model(runnable, (height, width))
        profile.nonzero_params = profile.params
        return profile
    try:
        first = next(model.parameters())
        device, dtype = first.device, first.dtype if first.is_floating_point() else torch.float32
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    rows: list[LayerRow] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            rows.append(
                LayerRow(names[module], mac_kind(module), tuple(output.shape[1:]), _layer_params(module),
                         _layer_macs(module, inputs, output))
            )

    handles = [m.register_forward_hook(hook) for m in model.modules() if mac_kind(m) is not None]
    was_training = model.training
    threads = torch.get_num_threads()
    model.eval()
    try:
        # One batch-1 forward is too small to gain from threads, and loses a lot to them on a
        # busy machine.
        torch.set_num_threads(1)
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width, device=device, dtype=dtype))
    finally:
        torch.set_num_threads(threads)
        for h in handles:
            h.remove()
        model.train(was_training)

    by_kind: dict[str, dict] = {}
    for row in rows:
        entry = by_kind.setdefault(row.kind, {"layers": 0, "params": 0, "macs": 0})
        entry["layers"] += 1
        entry["params"] += row.params
        entry["macs"] += row.macs
    by_kind = {k: by_kind[k] for k in KIND_ORDER if k in by_kind}
    params = sum(p.numel() for p in model.parameters())
    nonzero = int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return Profile(
        params=params,
        macs=sum(r.macs for r in rows),
        rows=rows,
        by_kind=by_kind,
        input_size=(height, width),
        nonzero_params=nonzero,
        skipped=_skipped_layers(model),
    )


def kind_shares(profile: Profile) -> dict[str, tuple[float, float]]:
    """kind -> (% of MACs, % of conv/linear params): the MobileNet paper's Table 2."""
    total_macs = sum(v["macs"] for v in profile.by_kind.values()) or 1
    total_params = sum(v["params"] for v in profile.by_kind.values()) or 1
    return {k: (100.0 * v["macs"] / total_macs, 100.0 * v["params"] / total_params) for k, v in profile.by_kind.items()}
