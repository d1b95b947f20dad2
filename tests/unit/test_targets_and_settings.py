"""Targets file loading (with environment overrides) and typed settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from shared.core.errors import ConfigurationError
from shared.core.targets import AuthKind, TargetRegistry, env_override_name

REPO = Path(__file__).resolve().parents[2]


def test_demo_targets_file_loads_with_override() -> None:
    env = {"WRITEBACK_TARGET_LOCAL_EHR_BASE_URL": "http://127.0.0.1:9999/fhir/R4/"}
    registry = TargetRegistry.from_file(REPO / "config" / "targets.yaml", env)
    target = registry.get("local-ehr")
    assert target is not None
    assert target.base_url == "http://127.0.0.1:9999/fhir/R4"
    assert target.auth.type is AuthKind.MANAGED_IDENTITY and target.auth.scope == "api://local-ehr/.default"
    assert registry.get("nope") is None and registry.ids() == ["local-ehr"]


def test_override_name() -> None:
    assert env_override_name("local-ehr") == "WRITEBACK_TARGET_LOCAL_EHR_BASE_URL"


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("targets:\n  a:\n    base_url: ftp://x\n", "targets.a.base_url"),
        ("targets:\n  a:\n    base_url: http://x\n    auth: {type: managed_identity}\n", "targets.a.auth"),
        ("targets:\n  a:\n    base_url: http://x\n    colour: red\n", "targets.a.colour"),
        ("nothing: here\n", "'targets' mapping"),
        ("targets: [\n", "targets file"),
    ],
)
def test_bad_targets_file_names_the_field(tmp_path: Path, yaml_text: str, named: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigurationError, match=named.replace(".", r"\.").replace("'", "'")):
        TargetRegistry.from_file(path, {})


def test_settings_read_prefixed_and_identity_based_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRITEBACK_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("ServiceBusConnection__fullyQualifiedNamespace", "ns.servicebus.windows.net")
    monkeypatch.setenv("WritebackStorage__tableServiceUri", "https://acct.table.core.windows.net")
    settings = Settings()
    assert settings.max_body_bytes == 2048
    assert settings.servicebus_namespace == "ns.servicebus.windows.net"
    assert settings.table_endpoint == "https://acct.table.core.windows.net"
    assert settings.idempotency_retention_hours == 72
