"""Model options shared by every command that takes a MODEL (profile, export, eval, compress...).

Usage in a command module::

    @click.command()
    @click.argument("model")
    @model_options
    def export(model, **kwargs):
        loaded = load_model_from_cli(model, **pop_model_options(kwargs))

so that ``--weights``, ``--width-mult`` etc. mean the same thing everywhere.
"""

from __future__ import annotations

import functools

import click

MODEL_OPTION_NAMES = ("weights", "width_mult", "groups", "tf_padding", "num_classes", "preprocess", "preprocess_set")


def model_options(fn):
    """Click decorator adding the model options (see :data:`MODEL_OPTION_NAMES`)."""
    decorators = [
        click.option(
            "--weights",
            metavar="imagenet|PATH",
            default=None,
            help="Weights to load: 'imagenet' (published checkpoint, downloaded once) or a .pth state dict/checkpoint.",
        ),
        click.option("--width-mult", type=float, default=None, help="Width multiplier (mobilenet_v1/v2, shufflenet_v1)."),
        click.option("--groups", type=int, default=None, help="Group count of shufflenet_v1 (1, 2, 3, 4, 8)."),
        click.option(
            "--tf-padding",
            is_flag=True,
            default=False,
            help="TensorFlow SAME padding on strided convs (mobilenet_v1/v2 with TF-trained weights).",
        ),
        click.option("--num-classes", type=int, default=None, help="Number of output classes (default 1000)."),
        click.option(
            "--preprocess",
            "preprocess",
            metavar="PRESET",
            default=None,
            help="Preprocessing preset: torchvision, caffe or tf (default: the model's own).",
        ),
        click.option(
            "--preprocess-set",
            "preprocess_set",
            metavar="KEY=VALUE",
            multiple=True,
            help="Override one preprocessing field, e.g. crop=227 or mean=104,117,123 (repeatable).",
        ),
    ]
    return functools.reduce(lambda f, deco: deco(f), reversed(decorators), fn)


def pop_model_options(kwargs: dict) -> dict:
    """Remove the model options from a command's kwargs and return them."""
    return {name: kwargs.pop(name) for name in MODEL_OPTION_NAMES if name in kwargs}


def load_model_from_cli(
    model_ref: str,
    weights=None,
    width_mult=None,
    groups=None,
    tf_padding: bool = False,
    num_classes=None,
    preprocess=None,
    preprocess_set=(),
):
    """Build the LoadedModel described by the command-line model options."""
    from edgecnn.models import load_model

    options = {"width_mult": width_mult, "groups": groups, "num_classes": num_classes}
    if tf_padding:
        options["tf_padding"] = True
    loaded = load_model(model_ref, weights=weights, preprocess=preprocess, **options)
    if preprocess_set:
        loaded.preprocess = loaded.preprocess.with_overrides(preprocess_set)
    return loaded
