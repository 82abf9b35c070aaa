"""Every third-party import in edgecnn/ is declared in pyproject.toml, in the right place.

The device side (what ``bench``, ``compile``, ``eval`` of an ONNX file and ``pack`` import,
module-level imports followed transitively from CORE_ENTRY_POINTS) must import with the core
dependencies alone: that is what a Jetson user installs. Every other module belongs to the
``compress`` extra. Imports inside functions, ``try/except ImportError`` fallbacks and
``require(name, extra)`` calls must name a package that pyproject.toml declares (for
``require``: in that very extra).
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgecnn"
COMPRESS_EXTRA = "compress"
CORE_ENTRY_POINTS = (
    "edgecnn.cli",
    "edgecnn.commands.bench",
    "edgecnn.commands.compile",
    "edgecnn.commands.eval",
    "edgecnn.commands.pack",
    "edgecnn.commands.ship",
    "edgecnn.ship",
    "edgecnn.backends.ort",
    "edgecnn.backends.tensorrt",
    "edgecnn.backends.trtexec",
    "edgecnn.backends.jetson",
    "edgecnn.measure.latency",
    "edgecnn.measure.size",
    "edgecnn.measure.accuracy",
    "edgecnn.pack.decoder",
)
# Not on PyPI for the platforms that use it: TensorRT comes with JetPack or from NVIDIA's own
# index, so no extra can declare it ('[trt]' brings Polygraphy, TensorRT is the user's).
PROVIDED_BY_PLATFORM = {"tensorrt"}
# Import name -> distribution, for packages that need not be installed here (TensorRT comes
# from JetPack or NVIDIA's index) or whose names differ from their import names.
KNOWN_DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "torch_pruning": "torch-pruning", "tensorrt": "tensorrt", "polygraphy": "polygraphy"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[]", spec.strip(), maxsplit=1)[0])


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(s) for s in project.get("dependencies", [])}
    extras = {name: {_requirement_name(s) for s in specs} for name, specs in project.get("optional-dependencies", {}).items()}
    return core, extras


@functools.lru_cache(maxsize=None)
def _installed() -> dict:
    return metadata.packages_distributions()


def distribution_of(import_name: str) -> str:
    if import_name in KNOWN_DISTRIBUTIONS:
        return _norm(KNOWN_DISTRIBUTIONS[import_name])
    found = _installed().get(import_name)
    return _norm(found[0]) if found else _norm(import_name)


@dataclass(frozen=True)
class Use:
    module: str  # edgecnn dotted name
    name: str  # top-level import name
    how: str  # "top" | "lazy" | "guarded" | "require:<extra>"
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_import_error_guard(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = [handler.type] if not isinstance(handler.type, ast.Tuple) else list(handler.type.elts)
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
            return True
    return False


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def scan(path: Path) -> tuple[list[Use], set[str]]:
    """Third-party uses in one file, and the edgecnn modules it imports at module level."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    uses: list[Use] = []
    internal_top: set[str] = set()

    def visit(node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_how = how
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                child_how = "lazy" if how == "top" else how
            elif isinstance(child, ast.Try) and _is_import_error_guard(child):
                child_how = "guarded"
            elif isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                record(child, child_how)
            elif isinstance(child, ast.Call) and getattr(child.func, "id", None) in ("require", "lazy_import"):
                # edgecnn.lazy: require(name, extra) / lazy_import(name, extra=...): an optional
                # dependency and the extra that provides it; a lazy_import without one is lazy.
                args = list(child.args) + [k.value for k in child.keywords if k.arg == "extra"]
                name, extra = ([a.value if isinstance(a, ast.Constant) else None for a in args] + [None, None])[:2]
                if isinstance(name, str) and isinstance(extra, str):
                    uses.append(Use(module, name.split(".")[0], f"require:{extra}", child.lineno))
                elif isinstance(name, str) and not name.startswith("edgecnn"):
                    uses.append(Use(module, name.split(".")[0], "lazy", child.lineno))
            visit(child, child_how)

    def record(node, how: str) -> None:
        if isinstance(node, ast.ImportFrom) and node.level:
            targets = [_resolve_relative(module, is_package, node.level, node.module)]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module]
        else:
            targets = [alias.name for alias in node.names]
        for target in targets:
            top = target.split(".")[0]
            if top == "edgecnn":
                if how == "top":
                    internal_top.add(target)
                    if isinstance(node, ast.ImportFrom):  # "from edgecnn.x import y" may name a submodule y
                        internal_top.update(f"{target}.{alias.name}" for alias in node.names)
            elif top not in sys.stdlib_module_names and top != "__future__":
                uses.append(Use(module, top, how, node.lineno))

    visit(ast.parse(path.read_text(), str(path)), "top")
    return uses, internal_top


def scan_package() -> tuple[list[Use], dict[str, set[str]]]:
    uses, graph = [], {}
    for path in sorted(PACKAGE.rglob("*.py")):
        file_uses, internal = scan(path)
        uses += file_uses
        graph[_module_name(path)] = internal
    return uses, graph


def _with_parents(name: str) -> set[str]:
    """Importing edgecnn.a.b runs edgecnn/__init__.py and edgecnn/a/__init__.py too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def core_side_modules(graph: dict[str, set[str]], roots=CORE_ENTRY_POINTS) -> set[str]:
    """The modules that the device-side entry points import at module level, transitively."""
    todo = [m for root in roots for m in _with_parents(root)]
    side: set[str] = set()
    while todo:
        module = todo.pop()
        if module in side or module not in graph:
            continue
        side.add(module)
        todo += [m for dep in graph[module] for m in _with_parents(dep)]
    return side


def problems(uses: list[Use], graph: dict[str, set[str]], core: set[str], extras: dict[str, set[str]], roots=CORE_ENTRY_POINTS) -> list[str]:
    anywhere = core.union(*extras.values()) if extras else set(core)
    core_side = core_side_modules(graph, roots)
    found = []
    for use in uses:
        dist = distribution_of(use.name)
        if dist in PROVIDED_BY_PLATFORM and use.how != "top":
            continue
        where = f"{use.module.replace('.', '/')}.py:{use.line} imports '{use.name}' ({dist})"
        if use.how.startswith("require:"):
            extra = use.how.split(":", 1)[1]
            if extra not in extras:
                found.append(f"{where} via require(..., '{extra}'), but pyproject.toml has no extra '{extra}'")
            elif dist not in extras[extra] and dist not in core:
                found.append(f"{where} via require(..., '{extra}'), but that extra does not declare it")
        elif use.how == "top":
            allowed = core if use.module in core_side else core | extras.get(COMPRESS_EXTRA, set())
            if dist not in allowed:
                side = "a device-side (core) module" if use.module in core_side else f"a '{COMPRESS_EXTRA}' module"
                found.append(f"{where} at module level in {side}, not declared there")
        elif dist not in anywhere:
            found.append(f"{where} ({use.how}), declared nowhere in pyproject.toml")
    return found


def test_every_third_party_import_is_declared():
    core, extras = declared()
    uses, graph = scan_package()
    assert uses, "the scan found no third-party import at all"
    assert problems(uses, graph, core, extras) == []


def test_scan_follows_the_device_side_imports():
    _, graph = scan_package()
    side = core_side_modules(graph)
    assert {"edgecnn", "edgecnn.errors", "edgecnn.backends", "edgecnn.pack.decoder"} <= side
    assert "edgecnn.passes.quantize" not in side and "edgecnn.train.distill" not in side


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import scipy\nimport torch\n", "at module level in a 'compress' module"),
        ("import torch\n", "at module level in a device-side (core) module"),
        ("def f():\n    import zzz_undeclared\n", "(lazy), declared nowhere"),
        ("try:\n    import zzz_undeclared\nexcept ImportError:\n    pass\n", "(guarded), declared nowhere"),
        ("from edgecnn.lazy import require\nrequire('torch_pruning', 'prune')\n", "has no extra 'prune'"),
        ("from edgecnn.lazy import require\nrequire('polygraphy', 'ort')\n", "that extra does not declare it"),
        ("from edgecnn.lazy import lazy_import\nort = lazy_import('polygraphy', extra='ort')\n", "that extra does not declare it"),
        ("from edgecnn.lazy import lazy_import\nzzz = lazy_import('zzz_undeclared')\n", "(lazy), declared nowhere"),
    ],
)
def test_undeclared_imports_are_caught(tmp_path, monkeypatch, source, expected):
    fake = tmp_path / "edgecnn" / "fake.py"
    fake.parent.mkdir()
    fake.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    uses, internal = scan(fake)
    core = {"numpy", "onnx"}
    extras = {"compress": {"torch", "onnxruntime"}, "ort": {"onnxruntime"}, "trt": {"polygraphy"}}
    roots = ("edgecnn.fake",) if "device-side" in expected else ()
    found = problems(uses, {"edgecnn.fake": internal}, core, extras, roots=roots)
    assert len(found) == 1 and expected in found[0], found


def test_readme_explains_every_declared_dependency():
    """README's 'Dependencies, and why each' table names every package pyproject.toml declares."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Dependencies, and why each", 1)[1].split("\n## ", 1)[0]
    named = {_norm(n) for row in table.splitlines() if row.startswith("| ") for n in re.split(r"[,\s]+", row.split("|")[1]) if n}
    core, extras = declared()
    missing = sorted(core.union(*extras.values()) - named)
    assert missing == [], f"README's dependency table does not explain: {missing}"
