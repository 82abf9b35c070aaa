"""Model options shared by every command that takes a MODEL (profile, export, eval, compress...).

Usage in a command module::

    @click.command()
    @click.argument("model")
    @model_options
    def export(model, **kwargs):
        loaded = load_model_from_cli(model, **pop_model_options(kwargs))

so that ``--weights``, ``--width-mult`` etc. mean the same thing everywhere. Options that
set a typed config's fields are derived from the config (:func:`config_options`), so the
command line and the recipe accept the same values with the same defaults.
"""

from __future__ import annotations

import functools
import typing
from typing import Optional

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


# --- options derived from a typed config ------------------------------------------------------


def _option_type(annotation):
    """(click type, multiple, convert) for a field annotation; Optional[X] is X (None means not given)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        (annotation,) = [a for a in args if a is not type(None)]
        args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        by_text = {str(a): a for a in args}
        return click.Choice(list(by_text)), False, by_text.get
    if origin is list and args and args[0] in (str, int, float):
        return args[0], True, None
    if annotation in (str, int, float, bool):
        return annotation, False, None
    raise TypeError(f"no command-line form for a field of type {annotation!r}; exclude the field or give it one")


def field_option(cls, field: str, flag: Optional[str] = None, help: Optional[str] = None):
    """Click option for ``cls.field`` (a pydantic model): type, choices, default and help from the field.

    The option's value is None (or ``()``) when it is not given, so that the config's own
    default applies: :func:`config_values` drops those.
    """
    info = cls.model_fields[field]
    click_type, multiple, convert = _option_type(info.annotation)
    flag = flag or "--" + field.replace("_", "-")
    text = help or info.description or ""
    default = None if info.is_required() or info.default_factory is not None else info.default
    kwargs: dict = {"default": None, "help": text, "show_default": False}
    if default is not None and not multiple:
        kwargs["help"] = f"{text} [default: {default}]".strip()
    if convert is not None:
        kwargs["callback"] = lambda ctx, param, value: None if value is None else convert(value)
    if click_type is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", field, **kwargs)
    if multiple:
        kwargs.update(default=(), multiple=True, help=f"{text} (repeatable)".strip())
    return click.option(flag, field, type=click_type, **kwargs)


def config_options(cls, exclude: tuple[str, ...] = (), flags: Optional[dict[str, str]] = None):
    """Click decorator: one :func:`field_option` per field of ``cls`` (``flags`` renames some)."""
    flags = flags or {}
    decorators = [field_option(cls, name, flags.get(name)) for name in cls.model_fields if name not in exclude]
    return lambda fn: functools.reduce(lambda f, deco: deco(f), reversed(decorators), fn)


def config_values(cls, kwargs: dict, flags: Optional[dict[str, str]] = None, **fixed):
    """Pop the options of ``cls`` from ``kwargs`` and build the config; a bad value is one UserError line."""
    from pydantic import ValidationError

    from edgecnn.errors import UserError

    values = {name: kwargs.pop(name) for name in cls.model_fields if name in kwargs}
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None and v != ()}
    try:
        return cls(**values, **fixed)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        flag = (flags or {}).get(field) or "--" + field.replace("_", "-")
        raise UserError(f"{flag} {values.get(field)}: {err['msg']}") from None


def device_option(multiple: bool = False, flag: str = "--device"):
    """``--device SPEC``: where the command measures (edgecnn.devices; default: this machine).

    A spec is ``local``, a device kind's own spelling (``edgecnn.devices.device_kinds()``), or a
    name from the devices file. Parsing happens in the command, so a bad spec is one line.
    """
    return click.option(
        flag, "devices" if multiple else "device", multiple=multiple, default=None, metavar="DEVICE",
        help="Where to run: local (default), a device spec such as ssh://user@host[:port] or "
             "qemu-arm[:CPU], or a name from the devices file" + ("; repeat for several" if multiple else "") + ".",
    )
