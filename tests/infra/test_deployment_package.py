"""What ships in the Functions deployment package: ``.funcignore`` leaves out the test fakes, the tests, the local
tools and the local runtime, keeps the app, and nothing that ships imports the fakes.

Core Tools and ``azd`` read ``.funcignore`` with gitignore rules; ``pathspec``'s ``GitIgnoreSpec`` applies the same.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from pathspec import GitIgnoreSpec

REPO = Path(__file__).resolve().parents[2]
NOT_DEPLOYED = ("shared/fakes", "tests", "tools", "devhost")
DEPLOYED_CODE = ("function_app.py", "orchestrators", "activities", "shared")


@pytest.fixture(scope="module")
def funcignore() -> GitIgnoreSpec:
    return GitIgnoreSpec.from_lines((REPO / ".funcignore").read_text().splitlines())


def files_under(top: str) -> list[str]:
    path = REPO / top
    if path.is_file():
        return [top]
    found = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(p.relative_to(REPO).as_posix() for p in found)


def deployed_python(spec: GitIgnoreSpec) -> list[str]:
    return [f for top in DEPLOYED_CODE for f in files_under(top) if f.endswith(".py") and not spec.match_file(f)]


@pytest.mark.parametrize("top", NOT_DEPLOYED)
def test_funcignore_leaves_out(funcignore: GitIgnoreSpec, top: str) -> None:
    files = files_under(top)
    assert files, f"{top} holds no files"
    shipped = [f for f in files if not funcignore.match_file(f)]
    assert shipped == [], f".funcignore lets {len(shipped)} file(s) of {top}/ into the package: {shipped[:5]}"


def test_funcignore_keeps_the_app(funcignore: GitIgnoreSpec) -> None:
    kept = ["function_app.py", "host.json", "requirements.txt", "config/targets.yaml", "config/policy.yaml"]
    kept += [f for top in DEPLOYED_CODE for f in files_under(top) if not f.startswith("shared/fakes/")]
    assert [f for f in kept if funcignore.match_file(f)] == []


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file, function-level ones too; relative imports resolved."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def test_nothing_deployed_imports_the_fakes(funcignore: GitIgnoreSpec) -> None:
    files = deployed_python(funcignore)
    assert "function_app.py" in files and "shared/bootstrap.py" in files
    offenders = [
        f"{f}:{line} imports {name}"
        for f in files
        for line, name in imported_modules(REPO / f)
        if name == "shared.fakes" or name.startswith("shared.fakes.")
    ]
    assert offenders == []
