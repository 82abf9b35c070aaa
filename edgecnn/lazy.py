"""The one way edgecnn imports lazily: optional dependencies and heavy submodules.

``lazy_import("onnxruntime", extra="ort")`` returns a stand-in that imports the module on
first attribute access; a missing optional dependency is then a UserError naming the extra
to install. ``lazy_attributes`` gives a package a module ``__getattr__`` that resolves
public names from their submodules on first use (so the torch-free side can import a
package without pulling in its exporter).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Callable, Mapping, Optional

from edgecnn.errors import UserError


class LazyModule:
    """Stands in for a module until an attribute is read; then imports it (once)."""

    def __init__(self, name: str, extra: Optional[str] = None, hint: Optional[str] = None):
        self._name, self._extra, self._hint = name, extra, hint

    def load(self) -> ModuleType:
        """The real module (``sys.modules`` caches it); a missing optional one is a UserError
        with ``hint``, or naming the pip extra."""
        try:
            return importlib.import_module(self._name)
        except ImportError as exc:
            if self._hint is not None:
                raise UserError(self._hint) from None
            if self._extra is None:
                raise
            raise UserError(
                f"this needs the Python package '{self._name.split('.')[0]}' ({exc}); "
                f"install it with: pip install 'edgecnn[{self._extra}]'"
            ) from None

    def installed(self) -> bool:
        """Whether the module can be imported, without importing it."""
        return sys.modules.get(self._name) is not None or importlib.util.find_spec(self._name) is not None

    def __getattr__(self, attr: str):
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module '{self._name}'>"


def lazy_import(name: str, extra: Optional[str] = None, hint: Optional[str] = None) -> LazyModule:
    """A lazily imported module; for an optional one, ``extra`` names the pip extra that
    provides it, or ``hint`` is the whole message when it is missing."""
    return LazyModule(name, extra, hint)


def require(name: str, extra: str) -> ModuleType:
    """Import an optional dependency now, or raise a UserError naming the extra to install."""
    return LazyModule(name, extra).load()


def lazy_attributes(package: str, table: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: public name -> the submodule defining it."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module '{package}' has no attribute {name!r}")

    return __getattr__
