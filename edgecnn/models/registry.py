"""The model zoo registry: names, aliases, options, default preprocessing and weights as data.

Each family module registers one builder per variant with :func:`register_model` (the
torchvision pattern), so the CLI, ``available()`` and ``edgecnn models`` read one table.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional

from edgecnn.errors import UserError
from edgecnn.lazy import lazy_import

# Family modules that register models; imported on first lookup.
FAMILY_MODULES = [
    "edgecnn.models.squeezenet",
    "edgecnn.models.mobilenet_v1",
    "edgecnn.models.mobilenet_v2",
    "edgecnn.models.mobilenet_v3",
    "edgecnn.models.shufflenet_v1",
    "edgecnn.models.shufflenet_v2",
    "edgecnn.models.resnet",
]

ALIASES: dict[str, str] = {
    "squeezenet": "squeezenet1_1",
    "mobilenet": "mobilenet_v2",
    "shufflenet": "shufflenet_v2_x1_0",
}


@dataclass(frozen=True)
class PublishedWeights:
    """A published ImageNet checkpoint: where it lives, its hash and how it was trained."""

    url: str
    sha256_prefix: str  # the hash prefix that is part of the file name, checked on download
    preprocess: str = "torchvision"
    top1: Optional[float] = None  # published ImageNet-1k top-1 of this checkpoint (%)
    resize: int = 256  # evaluation resize of the checkpoint's recipe (newer torchvision recipes use 232)
    num_classes: int = 1000


@dataclass
class ZooEntry:
    """One registered zoo model: its builder and what the CLI and reports say about it
    (named apart from the recipe's ``model:`` section, which only refers to one)."""

    name: str
    builder: Callable
    family: str
    preprocess: str  # name of the default preprocessing preset
    options: tuple[str, ...]  # keyword options the builder accepts besides num_classes
    imagenet: Optional[PublishedWeights] = None
    summary: str = ""
    efficient: bool = True
    extra: dict = field(default_factory=dict)


_MODELS: dict[str, ZooEntry] = {}
_loaded = False


def register_model(
    name: str,
    family: str,
    preprocess: str = "torchvision",
    imagenet: Optional[PublishedWeights] = None,
    efficient: bool = True,
):
    """Decorator registering ``builder(num_classes=1000, **options) -> nn.Module`` as ``name``."""

    def deco(builder):
        params = inspect.signature(builder).parameters
        options = tuple(p for p in params if p != "num_classes" and params[p].kind == inspect.Parameter.KEYWORD_ONLY)
        summary = (builder.__doc__ or "").strip().split("\n")[0]
        _MODELS[name] = ZooEntry(name, builder, family, preprocess, options, imagenet, summary, efficient)
        return builder

    return deco


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in FAMILY_MODULES:
            lazy_import(module).load()
        _loaded = True


def available() -> list[str]:
    """Canonical zoo names (aliases are in :data:`ALIASES`)."""
    _load_all()
    return list(_MODELS)


def resolve_name(name: str) -> str:
    """Canonical name for a zoo name or alias; UserError listing the valid names otherwise."""
    _load_all()
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in _MODELS:
        aliases = ", ".join(f"{a}={t}" for a, t in ALIASES.items())
        raise UserError(
            f"unknown model '{name}'; valid models: {', '.join(_MODELS)} (aliases: {aliases}) "
            "or path/to/file.py:factory"
        )
    return key


def get_spec(name: str) -> ZooEntry:
    return _MODELS[resolve_name(name)]


def clean_options(spec_name: str, options: dict) -> dict:
    """Drop unset (None) options; refuse options the model does not take, in one line."""
    spec = get_spec(spec_name)
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in spec.options:
            takes = ", ".join(spec.options) if spec.options else "no options"
            raise UserError(f"model '{spec.name}' does not take option '{key}'; it takes: {takes}")
    return given


def create(name: str, num_classes: int = 1000, **options):
    """Build zoo model ``name`` (randomly initialised) with ``num_classes`` outputs."""
    spec = get_spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    return spec.builder(num_classes=num_classes, **clean_options(spec.name, options))
