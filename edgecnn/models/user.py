"""User architectures: ``path/to/file.py:factory`` where ``factory(**options)`` returns an nn.Module.

A user model is first-class: every command that takes a zoo name takes such a reference.
The file may define ``PREPROCESS`` (a preset name such as ``"caffe"`` or a dict of
:class:`~edgecnn.preprocess.Preprocess` fields) to give its default preprocessing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable, Optional

import torch.nn as nn

from edgecnn.errors import UserError


def is_user_ref(ref: str) -> bool:
    """True for ``something.py:name`` references."""
    if ":" not in ref:
        return False
    path, _, attr = ref.rpartition(":")
    return path.endswith(".py") and attr.isidentifier()


def split_ref(ref: str) -> tuple[Path, str]:
    path, _, attr = ref.rpartition(":")
    return Path(path), attr


def load_factory(ref: str) -> tuple[Callable, object]:
    """(factory, the imported module) for ``path/to/file.py:factory``."""
    path, attr = split_ref(ref)
    if not path.is_file():
        raise UserError(f"model file '{path}' does not exist; give path/to/file.py:factory or a zoo name")
    # A unique module name per file, so two user files called model.py do not collide.
    module_name = "edgecnn_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # sys.exit()/exit() at the top level would end edgecnn without a word
        del sys.modules[module_name]
        raise UserError(f"model file '{path}' exits when imported (SystemExit({exc.code!r})); move that code under "
                        "if __name__ == '__main__':") from None
    except Exception as exc:
        del sys.modules[module_name]
        raise UserError(f"importing model file '{path}' failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name]
        raise UserError(f"'{path}' has no callable '{attr}'; callables defined there: {', '.join(names) or 'none'}")
    return factory, module


def build_user_model(ref: str, options: dict) -> tuple[nn.Module, Optional[object]]:
    """Call the factory with the given (non-None) options; returns (module, its PREPROCESS or None)."""
    factory, module = load_factory(ref)
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in options:
        if key not in params and not takes_kwargs:
            accepted = ", ".join(p for p in params if params[p].kind != inspect.Parameter.VAR_POSITIONAL) or "no options"
            raise UserError(f"model factory '{ref}' does not take option '{key}'; it takes: {accepted}")
    try:
        model = factory(**options)
    except UserError:
        raise
    except SystemExit as exc:
        raise UserError(f"model factory '{ref}' exited (SystemExit({exc.code!r})) instead of returning a model; "
                        "return a torch.nn.Module from it") from None
    except Exception as exc:
        raise UserError(f"model factory '{ref}' failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory '{ref}' returned {type(model).__name__}, not a torch.nn.Module")
    return model, getattr(module, "PREPROCESS", None)
