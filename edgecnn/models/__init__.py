"""The edgecnn model zoo: efficient CNNs with their preprocessing, and user architectures.

``create(name)`` builds a zoo architecture; ``load_model(ref, weights=...)`` gives a ready
:class:`LoadedModel` (module in eval mode + preprocessing + labels) for a zoo name, an alias
or a ``path/to/file.py:factory`` reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch.nn as nn

from edgecnn.models.registry import ALIASES, available, create, get_spec, resolve_name
from edgecnn.preprocess import Preprocess, get_preset

__all__ = [
    "ALIASES",
    "LoadedModel",
    "available",
    "create",
    "default_preprocess",
    "get_spec",
    "load_model",
    "resolve_name",
]


@dataclass
class LoadedModel:
    """A model ready to evaluate, export or compress, with everything needed to feed it."""

    module: nn.Module
    name: str  # canonical zoo name, or the path/to/file.py:factory reference
    options: dict = field(default_factory=dict)  # options the model was built with (num_classes included)
    preprocess: Preprocess = field(default_factory=Preprocess)
    labels: Optional[list[str]] = None
    weights: str = "random init"  # where the weights came from


def default_preprocess(name: str) -> Preprocess:
    """The preprocessing a zoo model's published weights were trained with."""
    spec = get_spec(name)
    if spec.imagenet is None:
        return get_preset(spec.preprocess)
    preprocess = get_preset(spec.imagenet.preprocess)
    if spec.imagenet.resize != preprocess.resize:
        preprocess = preprocess.replace(resize=spec.imagenet.resize, name=preprocess.name)
    return preprocess


def _as_preprocess(value) -> Preprocess:
    if isinstance(value, Preprocess):
        return value
    if isinstance(value, dict):
        return Preprocess(**value)
    return get_preset(value)


def load_model(
    ref: str,
    weights: Optional[str] = None,
    preprocess: Union[None, str, Preprocess] = None,
    **options,
) -> LoadedModel:
    """Build a zoo or user model, load ``weights`` ('imagenet' or a checkpoint path), put it in eval mode.

    ``options`` are the builder's keyword options (``num_classes``, ``width_mult``,
    ``groups``, ``tf_padding``...); ``None`` values mean "the default". ``preprocess`` is a
    preset name or a :class:`Preprocess`; by default the model's own.
    """
    from edgecnn.models import user
    from edgecnn.models.weights import load_weights

    given = {k: v for k, v in options.items() if v is not None}
    if user.is_user_ref(ref):
        module, user_preprocess = user.build_user_model(ref, given)
        name = ref
        zoo_name = None
        default = _as_preprocess(user_preprocess) if user_preprocess is not None else get_preset("torchvision")
    else:
        name = resolve_name(ref)
        zoo_name = name
        module = create(name, **given)
        default = default_preprocess(name)
    description, labels = "random init", None
    if weights:
        description, labels = load_weights(module, weights, zoo_name)
    if labels is None and str(weights).lower() == "imagenet":  # published weights use the standard order
        from edgecnn.imagenet import synsets

        labels = list(synsets())
    if labels is not None and hasattr(module, "num_classes") and len(labels) != module.num_classes:
        labels = None
    module.eval()
    return LoadedModel(
        module=module,
        name=name,
        options=given,
        preprocess=_as_preprocess(preprocess) if preprocess is not None else default,
        labels=labels,
        weights=description,
    )

