"""The package's shape: each stage a folder, lower layers never importing higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geoseg"

# The data flow of DESIGN.md, lowest first. A module may import its own layer and those below.
LAYERS = {
    "errors": 0,
    "config": 0,
    "scheduler": 0,
    "tiling": 1,
    "models": 2,
    "training": 3,
    "postprocess": 3,
    "vectorize": 4,
    "run": 5,
    "batch": 6,
    "cli": 7,
    "__init__": 8,
}
FLAT_MODULES = {"__init__", "errors", "config", "scheduler"}
MAX_LINES = 800


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str) -> set[str]:
    """geoseg modules ``path`` imports anywhere (functions included), except under
    ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("geoseg"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("geoseg"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        graph[name] = {m for m in _imports(path, name) if m != name and m != "geoseg"}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module)


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert wrong == []


def test_every_stage_is_a_folder_and_few_modules_sit_flat() -> None:
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat <= FLAT_MODULES
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert {"tiling", "models", "training", "postprocess", "vectorize", "run", "batch"} <= folders
    assert folders <= set(LAYERS)


def test_no_module_is_over_800_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_public_api_is_exported_at_the_root_without_importing_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, geoseg\n"
        "assert 'torch' not in sys.modules and 'distributed' not in sys.modules\n"
        "for name in geoseg.__all__:\n"
        "    assert getattr(geoseg, name) is not None, name\n"
        "print(len(geoseg.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 10


def test_every_lazily_exported_name_is_in_all() -> None:
    import geoseg

    assert set(geoseg._API) | {"__version__"} == set(geoseg.__all__)
