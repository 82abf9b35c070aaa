"""Checkpoints: the model as each stage left it, with the numbers that do not need ONNX."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

from edgecnn.measure.profile import profile_model


@dataclass
class Checkpoint:
    """The model as one stage left it (a frozen copy)."""

    stage: str
    module: Any
    fingerprint: str
    quantized: bool
    stats: dict = field(default_factory=dict)


def profile(model, input_size: int) -> dict:
    """params, non-zero params and MACs (conv + linear, batch 1) of a PyTorch model, and the
    layers the MAC counter says it skipped (``skipped``: ``{"layer", "kind"}`` each)."""
    p = profile_model(model, input_size)
    skipped = [_skipped_entry(s) for s in getattr(p, "skipped", None) or []]
    return {"params": int(p.params), "nonzeros": int(p.nonzero_params), "macs": int(p.macs), "skipped": skipped}


def _skipped_entry(item) -> dict:
    """A layer the MAC counter did not count, as ``{"layer", "kind"}`` whatever form it came in."""
    if isinstance(item, dict):
        return {"layer": item.get("layer", item.get("name")), "kind": item.get("kind", "?")}
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return {"layer": str(item[0]), "kind": str(item[1])}
    if hasattr(item, "name"):
        return {"layer": item.name, "kind": getattr(item, "kind", type(item).__name__)}
    return {"layer": str(item), "kind": "?"}


def is_quantized(model) -> bool:
    """True when a quantize pass has put quantizers into the model (Q/DQ export needed)."""
    return any(hasattr(m, "weight_quantizer") or hasattr(m, "input_quantizer") for m in model.modules())


def fingerprint(model) -> str:
    """A hash of the architecture and every tensor: equal fingerprints mean nothing changed."""
    h = hashlib.sha256(repr(model).encode())
    for name, tensor in list(model.state_dict().items()):
        h.update(name.encode())
        if hasattr(tensor, "detach"):
            t = tensor.detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def make_checkpoint(stage: str, module, input_size: int) -> Checkpoint:
    """Freeze a copy of ``module`` (eval mode, no gradients) with its profile and fingerprint."""
    module.eval()
    ck = Checkpoint(stage, copy.deepcopy(module), fingerprint(module), is_quantized(module), profile(module, input_size))
    for p in ck.module.parameters():
        p.requires_grad_(False)
    return ck
