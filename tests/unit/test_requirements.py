"""Every distribution the code imports is pinned in the requirements file of the place it runs.

- The app (``function_app.py``, ``orchestrators/``, ``activities/``, ``shared/``) against ``requirements.txt``, which
  is all the deployment installs: a package that only arrives as a dependency of another can change or vanish with
  that other's next release.
- What ``make run`` runs (the local runtime, ``devhost/``, the local services' launchers, ``tools/services/``, and
  every module of this repository they import) against ``requirements-local.txt``.
- Everything else (tests, benchmarks, tools) against ``requirements-dev.txt``.

Imports are read with ``ast`` (function-level ones too), so nothing is imported to find them. A top-level name is
mapped to its distributions with ``importlib.metadata.packages_distributions()``; for a namespace package that
several distributions share (``azure``, ``opentelemetry``, ``fhir``) the longest dotted prefix that a distribution's
own files hold decides, so ``opentelemetry.sdk.trace`` needs ``opentelemetry-sdk`` and not just any
``opentelemetry-*``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {".venv", ".venv-checkov", "node_modules", ".local", ".git", "__pycache__", ".mypy_cache"}
APP = ("function_app.py", "orchestrators", "activities", "shared")
LOCAL_RUN = ("devhost", "tools/services")


def canonical(name: str) -> str:
    """A distribution name normalised as PEP 503 does (``PyYAML`` → ``pyyaml``, ``fhir.resources`` →
    ``fhir-resources``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> dict[str, str]:
    """canonical name → the line naming it, for ``path`` and every file it includes with ``-r``."""
    names: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            names.update(requirement_names(path.parent / line.split(maxsplit=1)[1]))
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        assert match, f"{path.name}: cannot read the requirement {raw!r}"
        names[canonical(match.group())] = line
    return names


def python_files(tops: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for top in tops:
        path = REPO / top
        if path.is_file():
            files.append(path)
            continue
        files += [p for p in sorted(path.rglob("*.py")) if not SKIPPED_DIRS.intersection(p.relative_to(REPO).parts)]
    return files


def own_top_level_names() -> set[str]:
    """The repository's own importable names: its packages and top-level modules, and the sample apps that tests
    and benchmarks load from their own folders."""
    names = {p.stem for p in REPO.glob("*.py")}
    names |= {p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    for app_dir in (REPO / "tests/runtime/apps", REPO / "tools/bench_app"):
        names |= {p.stem for p in app_dir.glob("*.py")}
    return names


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every absolute import in the file; ``from a import b`` gives ``a.b`` (which may be
    an attribute rather than a module: resolution falls back to ``a``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}" if alias.name != "*" else node.module


@cache
def _packages() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@cache
def _files_of(distribution: str) -> frozenset[str]:
    return frozenset(f.as_posix() for f in importlib.metadata.files(distribution) or ())


@cache
def distributions_of(module: str) -> frozenset[str]:
    """The installed distributions (canonical names) that provide ``module``; empty when none does."""
    top = module.partition(".")[0]
    candidates = _packages().get(top, [])
    if len(set(candidates)) <= 1:
        return frozenset(canonical(d) for d in candidates)
    parts = module.split(".")
    for depth in range(len(parts), 1, -1):
        prefix = "/".join(parts[:depth])
        owners = frozenset(
            canonical(d)
            for d in candidates
            if any(f.startswith(prefix + "/") or f.startswith(prefix + ".") for f in _files_of(d))
        )
        if owners:
            return owners
    return frozenset(canonical(d) for d in candidates)


def third_party_imports(files: Iterable[Path]) -> Iterator[tuple[str, str]]:
    """(``file:line``, dotted name) for each import that is neither the standard library nor this repository."""
    own = own_top_level_names()
    for path in files:
        for line, name in imports_of(path):
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names or top in own or top == "__future__":
                continue
            yield f"{path.relative_to(REPO)}:{line}", name


def unpinned(files: Iterable[Path], requirements: Path) -> list[str]:
    """One line per distribution imported but not pinned, naming the first import of it."""
    pinned = requirement_names(requirements)
    problems: dict[str, str] = {}
    for where, name in third_party_imports(files):
        owners = distributions_of(name)
        if not owners:
            problems.setdefault(name, f"{name}: no installed distribution provides it ({where})")
        elif not owners & pinned.keys():
            missing = " or ".join(sorted(owners))
            problems.setdefault(missing, f"{missing}: imported by {where} ({name})")
    return sorted(problems.values())


def repo_module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def import_closure(tops: Iterable[str]) -> list[Path]:
    """The files under ``tops`` and every file of this repository they import, transitively."""
    own = own_top_level_names()
    seen: set[Path] = set()
    todo = python_files(tops)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for _, name in imports_of(path):
            if name.partition(".")[0] not in own:
                continue
            # ``from a.b import c``: c is a module or a name in a.b; ``import a.b.c`` also runs a and a.b.
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                found = repo_module_file(".".join(parts[:depth]))
                if found is not None and found not in seen:
                    todo.append(found)
    return sorted(seen)


def test_the_app_imports_only_what_requirements_txt_pins() -> None:
    problems = unpinned(python_files(APP), REPO / "requirements.txt")
    assert problems == [], "pin these in requirements.txt:\n" + "\n".join(problems)


def test_make_run_imports_only_what_requirements_local_txt_pins() -> None:
    files = import_closure(LOCAL_RUN)
    assert REPO / "devhost/host.py" in files and REPO / "tools/services/__main__.py" in files
    problems = unpinned(files, REPO / "requirements-local.txt")
    assert problems == [], "pin these in requirements-local.txt:\n" + "\n".join(problems)


def test_tests_and_tools_import_only_what_requirements_dev_txt_pins() -> None:
    problems = unpinned(python_files(["."]), REPO / "requirements-dev.txt")
    assert problems == [], "pin these in requirements-dev.txt:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-local.txt", "requirements-dev.txt"])
def test_every_requirement_is_pinned_to_the_version_installed(name: str) -> None:
    """Each line pins one version with ``==``, the version the tests run with."""
    problems = []
    for line in requirement_names(REPO / name).values():
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]+\])?==(\S+)", line)
        if not match:
            problems.append(f"{line!r} is not pinned with ==")
            continue
        installed = importlib.metadata.version(match.group(1))
        if installed != match.group(3):
            problems.append(f"{line!r}, but {installed} is installed")
    assert problems == []


def test_the_check_maps_namespace_packages_to_the_right_distribution() -> None:
    """The resolution the checks rely on: a namespace package's module belongs to the distribution holding it."""
    assert distributions_of("opentelemetry.sdk.trace.TracerProvider") == {"opentelemetry-sdk"}
    assert distributions_of("opentelemetry.trace") == {"opentelemetry-api"}
    assert distributions_of("azure.core.exceptions") == {"azure-core"}
    assert distributions_of("fhir.resources.R4B") == {"fhir-resources"}
    assert distributions_of("jwt") == {"pyjwt"}
    assert distributions_of("yaml") == {"pyyaml"}
    assert canonical("fhir.resources") == canonical("Fhir_Resources") == "fhir-resources"
