"""Loading weights into zoo and user models: checkpoint files and published ImageNet weights.

A checkpoint is a plain state dict or a dict holding one under ``state_dict`` or ``model``
(what training scripts usually save); a ``module.`` prefix from DataParallel is stripped.
Files are read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.fileio import atomic_path, file_sha256


def cache_dir() -> Path:
    """``$EDGECNN_CACHE`` or ``~/.cache/edgecnn``."""
    return Path(os.environ.get("EDGECNN_CACHE") or Path.home() / ".cache" / "edgecnn")


def read_checkpoint(path) -> tuple[dict, Optional[list[str]]]:
    """(state dict, labels or None) from a checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist; give --weights imagenet or a .pth checkpoint path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable / unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read weights file '{path}' as a PyTorch checkpoint ({first[:200]})") from None
    labels = None
    if isinstance(obj, dict):
        for key in ("labels", "classes"):
            if isinstance(obj.get(key), (list, tuple)) and all(isinstance(v, str) for v in obj[key]):
                labels = list(obj[key])
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"weights file '{path}' holds no state dict (expected a dict of tensors, or one under "
            "'state_dict' or 'model')"
        )
    return _normalise_keys(obj), labels


def _normalise_keys(state: dict) -> dict:
    """Strip DataParallel's ``module.`` prefix and bake torch.nn.utils.prune masks into weights."""
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            out[base] = value * state[base + "_mask"]
        elif key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        else:
            out[key] = value
    return out


def check_state_dict(module: nn.Module, state: dict, source: str) -> None:
    """UserError naming the first missing key, unexpected key and shape mismatch, if any."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: '{unexpected[0]}')")
    if mismatched:
        key = mismatched[0]
        parts.append(
            f"{len(mismatched)} shape mismatches (first: '{key}' is {tuple(state[key].shape)} in the checkpoint, "
            f"{tuple(expected[key].shape)} in the model)"
        )
    hint = "check the model name and options (--width-mult, --groups, --num-classes)"
    classifier = _classifier_prefix(expected)
    if (mismatched and not missing and not unexpected and classifier is not None
            and all(k.rsplit(".", 1)[0] == classifier for k in mismatched)):
        hint = f"for a different number of classes pass --num-classes {tuple(state[mismatched[0]].shape)[0]}"
    raise UserError(f"weights {source} do not fit the model: {'; '.join(parts)}; {hint}")


def _classifier_prefix(expected: dict) -> Optional[str]:
    """The module name of the last layer with a weight (the classifier, in every zoo model)."""
    weights = [k for k in expected if k.endswith(".weight")]
    return weights[-1].rsplit(".", 1)[0] if weights else None


def apply_state_dict(module: nn.Module, state: dict, source: str) -> None:
    check_state_dict(module, state, source)
    module.load_state_dict(state, strict=True)


def download(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` atomically (a module-level function so tests can replace it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0)
        from rich.console import Console
        from rich.progress import Progress

        # Progress goes to stderr so that `--json` output on stdout stays clean.
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"downloading {dest.name}", total=total or None)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                progress.advance(task, len(chunk))


def published_checkpoint(model_name: str) -> Path:
    """Path of the published ImageNet checkpoint of a zoo model, downloaded once into the cache."""
    from edgecnn.models.registry import get_spec

    spec = get_spec(model_name)
    if spec.imagenet is None:
        raise UserError(
            f"no published ImageNet weights for '{spec.name}'; train it or give a checkpoint with --weights PATH"
        )
    url = spec.imagenet.url
    dest = cache_dir() / "weights" / url.rsplit("/", 1)[-1]
    if not dest.is_file():
        try:
            download(url, dest)
        except OSError as exc:
            raise UserError(
                f"cannot download the ImageNet weights of '{spec.name}' from {url} ({exc}); "
                f"download it elsewhere and pass --weights PATH"
            ) from None
        if not file_sha256(dest).startswith(spec.imagenet.sha256_prefix):
            dest.unlink()
            raise UserError(
                f"the downloaded ImageNet weights of '{spec.name}' fail their hash check (expected sha256 "
                f"{spec.imagenet.sha256_prefix}...); retry, or pass a checkpoint with --weights PATH"
            )
    return dest


def load_weights(module: nn.Module, weights: str, model_name: Optional[str]) -> tuple[str, Optional[list[str]]]:
    """Load ``weights`` ('imagenet' or a path) into ``module``; returns (description, labels)."""
    if str(weights).lower() == "imagenet":
        if model_name is None:
            raise UserError("--weights imagenet is only for zoo models; give a user model's checkpoint with --weights PATH")
        path = published_checkpoint(model_name)
        state, labels = read_checkpoint(path)
        apply_state_dict(module, state, f"'{path.name}'")
        return f"imagenet ({path.name})", labels
    state, labels = read_checkpoint(weights)
    apply_state_dict(module, state, f"'{weights}'")
    return str(weights), labels
