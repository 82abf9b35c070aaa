"""Which input sizes a model can take: the real minimum (found by running it) and what fits in memory.

Both are measured, not assumed: the minimum is the smallest square input the model runs on
(pooling and stride make it model-specific), and the memory need is the activation size at
a small size scaled to the requested one (activations grow with height x width).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn

from edgecnn.errors import UserError

SEARCH_LIMIT = 1024  # no zoo model needs more than this to run at all


def _runs(module: nn.Module, size: int) -> bool:
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError, IndexError):
        return False
    return True


def smallest_input_size(module: nn.Module, start: int = 1, limit: int = SEARCH_LIMIT) -> Optional[int]:
    """The smallest square input size in [start, limit] the model runs on, or None."""
    was_training = module.training
    module.eval()
    try:
        if not _runs(module, limit):
            return None
        lo, hi = start, limit  # invariant: hi runs
        while lo < hi:
            mid = (lo + hi) // 2
            if _runs(module, mid):
                hi = mid
            else:
                lo = mid + 1
        return hi
    finally:
        module.train(was_training)


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def activation_bytes(module: nn.Module, size: int, reference: int) -> int:
    """Bytes of the largest layer input + output at ``size``, measured at ``reference`` and scaled."""
    largest = 0

    def hook(_mod, inputs, output):
        nonlocal largest
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, reference, reference))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)
    return int(largest * (size / reference) ** 2)


def check_input_size(module: nn.Module, size: int, name: str = "the model") -> None:
    """UserError when ``module`` cannot run at ``size`` x ``size``: too small (says the minimum)
    or too large for this machine's memory (says the largest that fits)."""
    if size < 1:
        raise UserError(f"--input-size {size} is not valid; give a positive number of pixels (e.g. 224)")
    was_training = module.training
    module.eval()
    try:
        if size <= SEARCH_LIMIT:  # small enough to try; activations this size fit any machine
            if not _runs(module, size):
                minimum = smallest_input_size(module, size + 1)
                if minimum is not None:
                    raise UserError(f"--input-size {size} is too small for {name}: it needs at least {minimum} (e.g. 224)")
            return
        reference = smallest_input_size(module, 32)
        free = available_memory()
        if reference is None or free is None:
            return
        per_pixel = activation_bytes(module, reference, reference) / reference**2
        need = per_pixel * size**2
        budget = free / 2  # the exporter and ONNX Runtime hold more than one layer's tensors at once
        if need > budget:
            fits = max(reference, int((budget / per_pixel) ** 0.5))
            raise UserError(
                f"--input-size {size} needs about {need / 1e9:,.0f} GB for one layer's activations and this machine "
                f"has {free / 1e9:.0f} GB free; give a smaller --input-size (at most about {fits})"
            )
    finally:
        module.train(was_training)


def output_classes(module: nn.Module, size: int) -> Optional[int]:
    """How many classes the model outputs (its logits' last dimension), measured at ``size``."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            out = module(torch.zeros(1, 3, size, size))
    except (RuntimeError, ValueError):
        return getattr(module, "num_classes", None)
    finally:
        module.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim >= 1 else None
