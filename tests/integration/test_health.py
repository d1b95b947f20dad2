"""The health function, called as the host would call it, against Azurite."""

from __future__ import annotations

import json
from pathlib import Path

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
        assert body["dependencies"]["targets"] == {"state": "unavailable", "reason": "configuration-error"}
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
