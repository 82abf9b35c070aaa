"""The shape of the code, checked: no package imports a package above it, and no module or
function grows past a size a reader can hold without saying why.

Both checks read the source with ``ast`` (nothing is imported), so they run in a second.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgecnn"

# Layers, lowest first. A module may import any package on a LOWER level, and another
# package on its own level unless both are in KEPT_APART. backends sit below measure because
# measuring opens a runtime, never the reverse. The root package ("edgecnn", for
# __version__) and the single-file modules are the bottom.
LAYERS: list[tuple[str, ...]] = [
    ("edgecnn", "errors", "fileio", "imagenet", "lazy", "latency_stats", "outputs", "preprocess", "records",
     "stats", "targets", "cpu", "devices"),
    ("models",),
    ("passes", "train", "data"),
    ("export", "pack"),
    ("backends",),
    ("measure",),
    ("search",),
    ("pipeline", "recipe", "report", "ship"),
    ("cli", "cli_options", "commands", "__main__"),
]
# Side by side, never importing each other: passes must not import train (distill takes
# hooks instead), train must not import passes; data feeds both.
KEPT_APART = {"passes", "train", "data", "export", "pack"}

# Imports that still point upwards, as (file, module): why, and what removes it. Empty it as
# they go: an entry whose import is gone fails test_no_stale_exceptions.
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# A module or function may stay longer when it says why: a comment "# long: <reason>" in the
# first 10 lines of the module, or just above / at the top of the function.
LONG_MARKER = re.compile(r"^\s*# long: \S")

# Files allowed to stay long for now (paths from the repository root), each until the change
# that shortens it; that change deletes the entry (an entry that is no longer long fails
# test_no_stale_exceptions). Empty since the glue redesign split pipeline.py and recipe.py.
LONG_EXCEPTIONS: set[str] = set()


def level_of(package: str) -> Optional[int]:
    for i, names in enumerate(LAYERS):
        if package in names:
            return i
    return None


def package_of(module: str) -> str:
    """'edgecnn.passes.quant.calibrate' -> 'passes'; 'edgecnn.errors' -> 'errors'; 'edgecnn' -> 'edgecnn'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


MODULE_REF = re.compile(r"^edgecnn(\.[A-Za-z_]\w*)+$")


def _names_a_module(text: str) -> bool:
    """'edgecnn.backends.ort' as a string (importlib, lazy tables) names a module; a metadata
    key such as 'edgecnn.precision' does not."""
    if not MODULE_REF.match(text):
        return False
    path = PACKAGE.parent.joinpath(*text.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def edgecnn_imports(path: Path, tree: Optional[ast.AST] = None, submodules: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) for every edgecnn import in ``path``: module-level, inside functions,
    relative, and modules named as strings (importlib / lazy-import tables). ``submodules``:
    ``from edgecnn.search import probes`` names ``edgecnn.search.probes``, not the package."""
    tree = tree or ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    # Modules named as strings count where a name is handed on: call arguments (importlib,
    # lazy_import) and the items of literal tables; a constant assigned alone is a key.
    handed_on = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            handed_on.update(id(a) for a in node.args)
        elif isinstance(node, ast.Dict):
            handed_on.update(id(v) for v in node.values)
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            handed_on.update(id(e) for e in node.elts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "edgecnn":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "edgecnn":
                continue
            if target == "edgecnn" or submodules:  # from edgecnn import passes  -> the subpackage, if it is one
                for alias in node.names:
                    sub = PACKAGE.parent.joinpath(*target.split("."), alias.name)
                    yield node.lineno, f"{target}.{alias.name}" if sub.is_dir() or sub.with_suffix(".py").is_file() else target
            else:
                yield node.lineno, target
        elif id(node) in handed_on and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _names_a_module(node.value):
            yield node.lineno, node.value


def upward_imports(paths: list[Path]) -> tuple[list[str], set[tuple[str, str]]]:
    """Violations as readable lines, and the (file, module) pairs that matched an exception."""
    problems, excused = [], set()
    for path in paths:
        rel = path.relative_to(ROOT).as_posix()
        source = package_of(module_name(path))
        src_level = level_of(source)
        if src_level is None:
            problems.append(f"{rel}: package '{source}' has no place in LAYERS; add it to the test")
            continue
        for line, module in edgecnn_imports(path):
            target = package_of(module)
            if target == source:
                continue
            dst_level = level_of(target)
            if dst_level is not None and (dst_level < src_level or (
                    dst_level == src_level and not {source, target} <= KEPT_APART)):
                continue
            if (rel, module) in UPWARD_EXCEPTIONS:
                excused.add((rel, module))
                continue
            where = "an unplaced package" if dst_level is None else (
                "the same level" if dst_level == src_level else "a higher level")
            problems.append(f"{rel}:{line} ({source}) imports {module} ({target}, {where})")
    return problems, excused


def test_no_package_imports_a_package_above_it():
    problems, _ = upward_imports(source_files())
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def _long_marker_in(lines: list[str], start: int, stop: int) -> bool:
    """A '# long: reason' comment on lines[start:stop] (0-based, clipped)."""
    return any(LONG_MARKER.match(line) for line in lines[max(0, start): max(0, stop)])


def oversized(paths: list[Path]) -> list[str]:
    """Modules over MAX_MODULE_LINES and functions over MAX_FUNCTION_LINES without a reason."""
    problems = []
    for path in paths:
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES and not _long_marker_in(lines, 0, 10):
            problems.append(f"{rel}: {len(lines)} lines (> {MAX_MODULE_LINES}); split it, or say why in a '# long:' comment at its top")
        for node in ast.walk(ast.parse(text, rel)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            if length <= MAX_FUNCTION_LINES:
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            body = node.body[1] if len(node.body) > 1 and isinstance(node.body[0], ast.Expr) and isinstance(
                getattr(node.body[0], "value", None), ast.Constant) else node.body[0]
            if not _long_marker_in(lines, first - 2, body.lineno - 1):
                problems.append(f"{rel}:{node.lineno} {node.name}() is {length} lines (> {MAX_FUNCTION_LINES}); "
                                "split it, or say why in a '# long:' comment above it")
    return problems


def test_no_oversized_module_or_function():
    paths = [p for p in source_files() if p.relative_to(ROOT).as_posix() not in LONG_EXCEPTIONS]
    problems = oversized(paths)
    assert not problems, "\n".join(problems)


def test_no_stale_exceptions():
    """Each listed exception is still needed; once its cause is gone, delete the entry."""
    _, excused = upward_imports(source_files())
    stale = [f"UPWARD_EXCEPTIONS {k}" for k in UPWARD_EXCEPTIONS if k not in excused]
    for rel in LONG_EXCEPTIONS:
        path = ROOT / rel
        if not path.is_file() or not oversized([path]):
            stale.append(f"LONG_EXCEPTIONS {rel}")
    assert not stale, "no longer needed, delete from tests/test_layering.py: " + ", ".join(stale)


# --- the checks themselves catch what they should -----------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sorted(tmp_path.rglob("*.py"))


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "edgecnn")
    return tmp_path


@pytest.mark.parametrize("source, ok", [
    ("from edgecnn.errors import UserError\n", True),
    ("def f():\n    from edgecnn.export.qdq import export_qdq\n", False),  # function-level, upwards
    ("import edgecnn.measure.profile\n", False),
    ("from ..measure import profile\n", False),  # relative
    ("from edgecnn import train\n", False),  # same level, beside passes
    ("X = {'a': 'edgecnn.backends.ort'}\n", False),  # named as a string (lazy import table)
    ("KEY = 'edgecnn.backends.ort'\n", True),  # a constant alone is a key, not an import
    ("from edgecnn.models.layer_select import layer_kind\n", True),
])
def test_layering_check_catches_upward_imports(fake_root, source, ok):
    paths = _tree(fake_root, {"edgecnn/__init__.py": "", "edgecnn/train/__init__.py": "",
                              "edgecnn/backends/ort.py": "", "edgecnn/passes/__init__.py": "",
                              "edgecnn/passes/fake.py": source})
    problems, _ = upward_imports(paths)
    assert (not problems) == ok, problems


def test_size_check_catches_long_modules_and_functions(fake_root):
    long_fn = "def f():\n" + "    x = 1\n" * 85
    paths = _tree(fake_root, {"edgecnn/a.py": "x = 1\n" * 401, "edgecnn/b.py": long_fn,
                              "edgecnn/c.py": "# long: one table of every operator\n" + "x = 1\n" * 401,
                              "edgecnn/d.py": "# long: a state machine read top to bottom\n" + long_fn,
                              "edgecnn/e.py": "def f():\n    # long:\n" + "    x = 1\n" * 85})
    flagged = {p.split(":")[0] for p in oversized(paths)}
    assert flagged == {"edgecnn/a.py", "edgecnn/b.py", "edgecnn/e.py"}  # e: a marker needs a reason


# --- no import cycles between modules ------------------------------------------------------

# Loops that are the design, as (importing module, imported module): why. Their edges are left
# out of the cycle check; an entry whose import is gone fails test_no_stale_cycle_exceptions.
CYCLE_EXCEPTIONS: dict[tuple[str, str], str] = {
    **{("edgecnn.passes.registry", f"edgecnn.passes.{name}"): "the pass registry loop: on first lookup the registry "
       "imports the pass modules, which register themselves with it"
       for name in ("channel_prune", "fold_bn", "prune", "quantize", "shift", "weight_share")},
    **{("edgecnn.models.registry", f"edgecnn.models.{name}"): "the model registry loop: on first lookup the registry "
       "imports the family modules, which register their builders with it"
       for name in ("squeezenet", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "shufflenet_v1", "shufflenet_v2", "resnet")},
}


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """module -> the edgecnn modules it imports (anywhere in the file), submodules resolved."""
    known = {module_name(p) for p in paths}
    return {module_name(p): {m for _, m in edgecnn_imports(p, submodules=True) if m in known and m != module_name(p)}
            for p in paths}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _without_exceptions(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {d for d in deps if (m, d) not in CYCLE_EXCEPTIONS} for m, deps in graph.items()}


def test_no_import_cycles():
    """A module that imports a module that imports it back (at any depth, inside functions too)
    is one piece split in two: merge them or move the shared part below both."""
    cycles = import_cycles(_without_exceptions(import_graph(source_files())))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_stale_cycle_exceptions():
    graph = import_graph(source_files())
    stale = [f"{a} -> {b}" for a, b in CYCLE_EXCEPTIONS if b not in graph.get(a, ())]
    assert not stale, "no longer imported, delete from CYCLE_EXCEPTIONS: " + ", ".join(stale)


def test_cycle_check_catches_function_level_cycles(fake_root):
    paths = _tree(fake_root, {"edgecnn/__init__.py": "", "edgecnn/search/__init__.py": "",
                              "edgecnn/search/run.py": "def f():\n    from edgecnn.search import probes\n",
                              "edgecnn/search/probes.py": "from edgecnn.search.space import x\n",
                              "edgecnn/search/space.py": "def g():\n    from .run import f\n"})
    assert import_cycles(import_graph(paths)) == [["edgecnn.search.probes", "edgecnn.search.run", "edgecnn.search.space"]]
