"""The one lazy-import primitive: nothing is imported before first use, a missing optional
dependency is one UserError naming the extra, and package attributes resolve on demand."""

from __future__ import annotations

import sys

import pytest

from edgecnn.errors import UserError
from edgecnn.lazy import lazy_attributes, lazy_import, require


def test_lazy_import_imports_on_first_attribute(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    colorsys = lazy_import("colorsys")
    assert "colorsys" not in sys.modules and colorsys.installed()
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0)[0] == 0.0
    assert "colorsys" in sys.modules


def test_missing_optional_module_names_the_extra():
    missing = lazy_import("edgecnn_no_such_module", extra="ort")
    assert not missing.installed()
    with pytest.raises(UserError, match=r"pip install 'edgecnn\[ort\]'"):
        missing.anything
    with pytest.raises(UserError, match="see the docs"):
        lazy_import("edgecnn_no_such_module", hint="see the docs").load()
    with pytest.raises(UserError, match=r"edgecnn\[prune\]"):
        require("edgecnn_no_such_module", "prune")
    with pytest.raises(ImportError):  # not optional: a plain ImportError, a bug to see
        lazy_import("edgecnn_no_such_module").load()


def test_blocked_module_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "edgecnn_blocked", None)
    assert not lazy_import("edgecnn_blocked").installed()


def test_lazy_attributes_resolve_from_their_module():
    getattr_ = lazy_attributes("pkg", {"rgb_to_hsv": "colorsys"})
    assert getattr_("rgb_to_hsv")(0.0, 1.0, 0.0)[0] == pytest.approx(1 / 3)
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'nope'"):
        getattr_("nope")


def test_packages_resolve_their_lazy_names():
    import edgecnn.export
    import edgecnn.passes

    assert edgecnn.passes.after_step_hooks.__module__ == "edgecnn.passes.hooks"
    assert edgecnn.export.read_metadata.__module__ == "edgecnn.export.metadata"
