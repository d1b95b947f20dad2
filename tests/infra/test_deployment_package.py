"""What ships in the Functions deployment package: ``.funcignore`` leaves out the test fakes, the tests, the local
tools and the local runtime, keeps the app, and nothing that ships imports the fakes. The targets and policy files
the Bicep chooses ship too, agree with each other, and define every target whose URL the Bicep sets.

Core Tools and ``azd`` read ``.funcignore`` with gitignore rules; ``pathspec``'s ``GitIgnoreSpec`` applies the same.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pathspec import GitIgnoreSpec

from shared.bootstrap import build
from shared.config import Settings
from shared.core.targets import TargetRegistry, env_override_name

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
    kept += ["config/targets.azure.yaml", "config/policy.azure.yaml"]
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


# --- the deployed targets and policy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed_settings() -> dict[str, Any]:
    """The app settings ``infra/app/api.bicep`` gives every deployment (parsed with pycep, as in test_bicep.py)."""
    pycep = pytest.importorskip("pycep")
    doc = pycep.BicepParser().parse(text=(REPO / "infra" / "app" / "api.bicep").read_text(encoding="utf-8"))
    settings: dict[str, Any] = doc["variables"]["baseAppSettings"]["value"]
    return settings


def test_the_deployment_chooses_its_targets_and_policy_together(deployed_settings: dict[str, Any]) -> None:
    assert deployed_settings["WRITEBACK_TARGETS_FILE"] == "config/targets.azure.yaml"
    assert deployed_settings["WRITEBACK_POLICY_FILE"] == "config/policy.azure.yaml"


def test_the_deployed_pair_ships_and_agrees(funcignore: GitIgnoreSpec, deployed_settings: dict[str, Any]) -> None:
    files = [deployed_settings["WRITEBACK_TARGETS_FILE"], deployed_settings["WRITEBACK_POLICY_FILE"]]
    assert [f for f in files if not (REPO / f).is_file() or funcignore.match_file(f)] == []
    settings = Settings(targets_file=files[0], policy_file=files[1], WEBSITE_SITE_NAME="func-writeback")
    build(settings).check_configuration()  # raises, naming both files, the source and the target, if they disagree


def test_every_target_url_the_infra_sets_names_a_deployed_target(deployed_settings: dict[str, Any]) -> None:
    infra_text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "infra").rglob("*.bicep")))
    set_by_infra = set(re.findall(r"WRITEBACK_TARGET_[A-Z0-9_]+_BASE_URL", infra_text))
    assert set_by_infra, "the infra sets no target URL"
    deployed = TargetRegistry.from_file(REPO / deployed_settings["WRITEBACK_TARGETS_FILE"], {})
    assert set_by_infra <= {env_override_name(t) for t in deployed.ids()}
