"""The shape of the code: modules a newcomer can read, dependencies that point one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import casnap

PACKAGE = Path(casnap.__file__).resolve().parent
MAX_LINES = 600
CORE = PACKAGE / "repository.py"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of tree outside `if TYPE_CHECKING:` blocks (imports for annotations only)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules a module imports at run time, anywhere in it (functions included)."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {name: imports(path, set(mods)) - {name} for name, path in mods.items()}
    # the package's __init__ re-exports the API: it may import anything, nothing imports it
    graph.pop("casnap")
    for deps in graph.values():
        deps.discard("casnap")
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_repository_core_imports_no_operation() -> None:
    mods = modules()
    operations = {
        "casnap.committer",
        "casnap.restorer",
        "casnap.staging",
        "casnap.collector",
        "casnap.checker",
        "casnap.retention",
        "casnap.stats",
        "casnap.changes",
        "casnap.cli",
    }
    assert not imports(CORE, set(mods)) & operations
    # commit never needs checkout (checkout uses commit for its safety snapshot)
    assert not imports(mods["casnap.committer"], set(mods)) & {"casnap.restorer", "casnap.staging"}


def test_modules_stay_readable() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    assert len(CORE.read_text().splitlines()) <= 450


def test_the_architecture_page_names_every_module_and_only_those() -> None:
    page = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`((?:[a-z0-9_]+/)?[a-z0-9_]+\.py)`", page))
    present = {
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
    }
    present -= {"__main__.py"}
    bare = {p.split("/")[-1] for p in present}
    missing = {p for p in present if p not in named and p.split("/")[-1] not in named}
    assert not missing, f"modules the page does not place: {sorted(missing)}"
    stale = {
        n
        for n in named
        if n not in present and n not in bare and not n.startswith(("tests/", "casnap/__init__"))
    }
    assert not stale, f"the page names modules that do not exist: {sorted(stale)}"


def layers() -> dict[str, int]:
    """Module -> its layer's position in docs/ARCHITECTURE.md (tables in page order; the CLI
    paragraph after them is the last layer)."""
    page = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    body = page.split("## The dependency rule")[0]
    out: dict[str, int] = {}
    for n, section in enumerate(re.split(r"\n\*\*", body)):
        for name in re.findall(r"`((?:[a-z0-9_]+/)?[a-z0-9_]+\.py)`", section):
            if name.startswith("tests/"):
                continue  # a test the page names, not a module
            dotted = name.removeprefix("casnap/")[:-3].replace("/", ".")
            out.setdefault("casnap" if dotted == "__init__" else f"casnap.{dotted}", n)
        for package in re.findall(r"the package `(casnap\.[a-z_.]+)` itself", section):
            out.setdefault(package, n)
        if "the package's `__main__`" in section:
            out.setdefault("casnap.__main__", n)
    return out


def test_every_module_has_a_documented_layer() -> None:
    """A module the page names in no layer (or names wrongly: `tests/x.py` read as a module,
    a package's `__init__.py` under another name) would have its imports go unchecked."""
    mods, layer = modules(), layers()
    assert sorted(set(mods) - set(layer)) == []
    assert sorted(set(layer) - set(mods)) == []


def test_imports_point_down_the_documented_layers() -> None:
    mods = modules()
    layer = layers()
    wrong = []
    for name, path in mods.items():
        if name not in layer:
            continue
        # `from casnap import x` names the module x: the package's __init__ loads nothing first
        for dep in imports(path, set(mods)) - {"casnap"}:
            if dep in layer and layer[dep] > layer[name]:
                wrong.append(f"{name} imports {dep}")
    assert not wrong, wrong
