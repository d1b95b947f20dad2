"""The health function, called as the host would call it, against Azurite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from shared import bootstrap

REPO = Path(__file__).resolve().parents[2]


def _clear() -> None:
    bootstrap.reset()


@pytest.fixture
def app_functions() -> dict[str, func.FunctionBuilder]:
    import function_app

    function_app.app.functions_bindings = None
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def _call_health(functions: dict[str, object]) -> func.HttpResponse:
    fn = functions["health"]
    req = func.HttpRequest("GET", "http://localhost/api/v1/health", body=b"")
    return fn.get_user_function()(req)


@pytest.mark.integration
def test_health_ready_against_azurite(azurite, app_functions, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRITEBACK_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("WRITEBACK_TARGETS_FILE", str(REPO / "config" / "targets.yaml"))
    _clear()
    try:
        resp = _call_health(app_functions)
        body = json.loads(resp.get_body())
        assert resp.status_code == 200, body
        assert body["dependencies"]["tableStorage"] == {"state": "ok"}
    finally:
        _clear()


def test_health_degraded_without_storage(app_functions, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WRITEBACK_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("WRITEBACK_TARGETS_FILE", str(tmp_path / "missing.yaml"))
    _clear()
    try:
        resp = _call_health(app_functions)
        body = json.loads(resp.get_body())
        assert resp.status_code == 503
        assert body["dependencies"]["tableStorage"]["state"] == "unavailable"
        targets = body["dependencies"]["targets"]
        assert targets["state"] == "unavailable" and targets["reason"] == "configuration-error"
        assert targets["detail"].startswith(f"targets file {tmp_path / 'missing.yaml'}: ")
    finally:
        _clear()


def test_liveness_answers_while_dependencies_are_down(
    app_functions, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WRITEBACK_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("WRITEBACK_TARGETS_FILE", str(tmp_path / "missing.yaml"))
    _clear()
    try:
        fn = app_functions["liveness"]
        resp = fn.get_user_function()(func.HttpRequest("GET", "http://localhost/api/v1/health/live", body=b""))
        assert resp.status_code == 200
        assert json.loads(resp.get_body()) == {"status": "alive"}
        assert _call_health(app_functions).status_code == 503
    finally:
        _clear()


# --- the deployed targets and policy, chosen by settings -----------------------------------------------------------

CONFIG = REPO / "config"


def _health_with(monkeypatch: pytest.MonkeyPatch, app_functions: Any, azurite: Any, **env: str) -> tuple[int, Any]:
    monkeypatch.setenv("WRITEBACK_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name in ("WEBSITE_SITE_NAME", "WEBSITE_AUTH_ENABLED", "WRITEBACK_TARGET_AHDS_FHIR_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clear()
    try:
        resp = _call_health(app_functions)
        return resp.status_code, json.loads(resp.get_body())
    finally:
        _clear()


DEPLOYED = {
    "WRITEBACK_TARGETS_FILE": "config/targets.azure.yaml",
    "WRITEBACK_POLICY_FILE": "config/policy.azure.yaml",
    "WEBSITE_SITE_NAME": "func-writeback",
}


@pytest.mark.integration
def test_the_deployed_pair_is_not_ready_until_its_fhir_url_is_set(
    azurite: Any, app_functions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, body = _health_with(monkeypatch, app_functions, azurite, **DEPLOYED)
    assert status == 503, body
    assert body["dependencies"]["tableStorage"] == {"state": "ok"}
    ahds = body["dependencies"]["targets"]["targets"]["ahds-fhir"]
    assert ahds["reason"] == "not-configured" and "WRITEBACK_TARGET_AHDS_FHIR_BASE_URL" in ahds["detail"]

    url = "https://ws-fhir.fhir.azurehealthcareapis.com"
    status, body = _health_with(
        monkeypatch, app_functions, azurite, **DEPLOYED, WRITEBACK_TARGET_AHDS_FHIR_BASE_URL=url
    )
    assert status == 200, body
    assert body["dependencies"]["targets"] == {"state": "ok", "targets": {"ahds-fhir": {"state": "ok"}}}


@pytest.mark.integration
def test_in_azure_a_loopback_target_is_not_ready(
    azurite: Any, app_functions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = {
        "WRITEBACK_TARGETS_FILE": str(CONFIG / "targets.yaml"),
        "WRITEBACK_POLICY_FILE": str(CONFIG / "policy.yaml"),
    }
    assert _health_with(monkeypatch, app_functions, azurite, **local)[0] == 200
    status, body = _health_with(monkeypatch, app_functions, azurite, **local, WEBSITE_SITE_NAME="func-writeback")
    assert status == 503, body
    local_ehr = body["dependencies"]["targets"]["targets"]["local-ehr"]
    assert local_ehr["state"] == "unavailable" and local_ehr["reason"] == "loopback-in-azure"
    assert "'127.0.0.1'" in local_ehr["detail"] and "WRITEBACK_TARGET_LOCAL_EHR_BASE_URL" in local_ehr["detail"]


@pytest.mark.integration
def test_a_mismatched_pair_is_not_ready_and_says_why(
    azurite: Any, app_functions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    mismatched = {**DEPLOYED, "WRITEBACK_POLICY_FILE": "config/policy.yaml"}
    status, body = _health_with(monkeypatch, app_functions, azurite, **mismatched)
    assert status == 503, body
    policy = body["dependencies"]["policy"]
    assert policy["state"] == "unavailable" and policy["reason"] == "configuration-error"
    assert policy["detail"].startswith(
        f"policy file {CONFIG / 'policy.yaml'} and targets file {CONFIG / 'targets.azure.yaml'} do not agree: "
    )
    assert "sources.crm.targets.local-ehr: target 'local-ehr' is not in the targets file" in policy["detail"]
