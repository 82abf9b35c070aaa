"""Shipped recipes work from an installed package: the built wheel holds every recipe, and a
recipe name resolves from the installed package data, with no source tree in sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "edgecnn" / "recipes"

CHECK = textwrap.dedent(
    """
    import json, sys
    import edgecnn
    from edgecnn.recipe import SHIPPED_RECIPES, load_recipe, shipped_recipe_names
    names = shipped_recipe_names()
    loaded = {n: [s.name for s in load_recipe(n).stages] for n in names}  # includes resolve there too
    print(json.dumps({"package": edgecnn.__file__, "recipes": str(SHIPPED_RECIPES), "loaded": loaded,
                      "path": sys.path}))
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, installed with ``pip --target`` (no dependencies)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "edgecnn", src / "edgecnn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, cwd=tmp, timeout=120)
    (wheel,) = (tmp / "dist").glob("edgecnn-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(tmp / "site"), str(wheel)],
                   check=True, cwd=tmp, timeout=120)
    return wheel


@pytest.mark.slow
def test_wheel_contains_every_recipe(installed):
    with zipfile.ZipFile(installed) as whl:
        packed = {Path(n).name for n in whl.namelist() if n.startswith("edgecnn/recipes/")}
    shipped = {p.name for p in RECIPES.glob("*.yaml")}
    assert len(shipped) >= 10 and "_defaults.yaml" in shipped
    assert packed == shipped


@pytest.mark.slow
def test_recipe_names_resolve_from_the_installed_package(installed):
    site = installed.parent.parent / "site"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    # -P: the working directory is not on sys.path; it is a folder without sources anyway.
    run = subprocess.run([sys.executable, "-P", "-c", CHECK], cwd=site.parent, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(result["package"]).is_relative_to(site), result["package"]
    assert Path(result["recipes"]).is_relative_to(site)
    assert not any(Path(p).resolve() == ROOT for p in result["path"] if p)
    expected = sorted(p.stem for p in RECIPES.glob("*.yaml") if not p.name.startswith("_"))
    assert sorted(result["loaded"]) == expected
    assert result["loaded"]["squeezenet-deep-compression"] == ["prune", "weight_share", "export", "measure"]
