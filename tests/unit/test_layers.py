"""The layers of ``shared/`` hold: imports point inward only, and no module imports itself back through others.

Every ``import`` statement counts, also one inside a function (a lazy import still ties two modules together).
The rules are those of docs/architecture.md:

- ``shared.core`` imports nothing else of ``shared``;
- ``shared.app`` (use cases) and ``shared.adapters`` import the core only; adapters never import use cases;
- ``shared.api`` (the HTTP face) imports the use cases, the core and ``shared.config``;
- ``shared.fakes`` import the core and the adapters' pure helpers, never use cases or the HTTP face;
- ``shared.bootstrap`` (the composition root) may import anything of ``shared``;
- ``shared`` never imports Azure Functions, the triggers (``orchestrators``, ``activities``), ``devhost`` or ``tools``;
- ``devhost`` (the local runtime) never imports ``tools``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

ALLOWED: dict[str, frozenset[str]] = {
    "shared.core": frozenset({"shared.core"}),
    "shared.config": frozenset(),
    "shared.app": frozenset({"shared.core", "shared.app"}),
    "shared.adapters": frozenset({"shared.core", "shared.adapters"}),
    "shared.api": frozenset({"shared.core", "shared.app", "shared.api", "shared.config"}),
    "shared.fakes": frozenset({"shared.core", "shared.adapters", "shared.fakes"}),
    "shared.bootstrap": frozenset(
        {"shared.core", "shared.app", "shared.api", "shared.adapters", "shared.config", "shared.bootstrap"}
    ),
}
FORBIDDEN_OUTSIDE = {
    "shared": ("azure.functions", "azure.durable_functions", "orchestrators", "activities", "devhost", "tools"),
    "devhost": ("tools",),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, the modules it may name) for every import statement in the file.

    ``from x import y`` names ``x`` and possibly the module ``x.y``; ``import x`` names ``x``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, [alias.name]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base, [base, *(f"{base}.{alias.name}" for alias in node.names)]


def layer_of(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def python_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def upward_imports(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        source = module_name(path)
        source_layer = layer_of(source)
        top = source.split(".")[0]
        for line, imported, _ in imports_of(path):
            where = f"{path.relative_to(REPO)}:{line} imports {imported}"
            if any(imported == f or imported.startswith(f + ".") for f in FORBIDDEN_OUTSIDE.get(top, ())):
                found.append(where)
                continue
            if source_layer is None or not imported.startswith("shared."):
                continue
            target_layer = layer_of(imported)
            if target_layer is None and imported != "shared":
                found.append(f"{where} (a module outside every layer)")
            elif target_layer is not None and target_layer not in ALLOWED[source_layer]:
                found.append(f"{where} ({source_layer} may not import {target_layer})")
    return found


def import_cycles(files: list[Path]) -> list[list[str]]:
    known = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in known}
    for path in files:
        source = module_name(path)
        for _, _, named in imports_of(path):
            graph[source].update(m for m in named if m in known and m != source)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A module importing its own package (``from shared.core import x``) is not a cycle.
            if state.get(nxt) == 1 and not node.startswith(nxt + ".") and not nxt.startswith(node + "."):
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_imports_point_inward() -> None:
    assert upward_imports(python_files("shared", "devhost")) == []


def test_no_import_cycles() -> None:
    assert import_cycles(python_files("shared", "devhost", "orchestrators", "activities")) == []


def test_every_shared_module_sits_in_a_layer() -> None:
    outside = [module_name(p) for p in python_files("shared") if layer_of(module_name(p)) is None]
    assert outside == ["shared"]


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("shared/core/models.py", "from shared.app.journal import Step\n", "shared.core may not import shared.app"),
        ("shared/app/intake.py", "from shared.api.responses import problem\n", "shared.app may not import shared.api"),
        (
            "shared/app/writer.py",
            "from shared.adapters import fhir_http\n",
            "shared.app may not import shared.adapters",
        ),
        ("shared/adapters/x.py", "def f():\n    from shared.app import pipeline\n", "may not import shared.app"),
        ("shared/api/x.py", "import azure.functions as func\n", "imports azure.functions"),
        ("devhost/x.py", "from tools.services import process\n", "imports tools.services"),
        ("shared/app/x.py", "from ..api import openapi\n", "shared.app may not import shared.api"),
    ],
)
def test_the_check_finds_an_upward_import(tmp_path: Path, where: str, source: str, expected: str) -> None:
    global REPO
    saved = REPO
    REPO = tmp_path
    try:
        path = tmp_path / where
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        found = upward_imports([path])
    finally:
        REPO = saved
    assert len(found) == 1 and expected in found[0], found


def test_the_check_finds_a_cycle(tmp_path: Path) -> None:
    global REPO
    saved = REPO
    REPO = tmp_path
    try:
        (tmp_path / "shared" / "adapters").mkdir(parents=True)
        (tmp_path / "shared" / "adapters" / "a.py").write_text("from shared.adapters import b\n")
        (tmp_path / "shared" / "adapters" / "b.py").write_text("def f():\n    from shared.adapters.a import x\n")
        cycles = import_cycles(python_files("shared"))
    finally:
        REPO = saved
    assert cycles == [["shared.adapters.a", "shared.adapters.b", "shared.adapters.a"]]
