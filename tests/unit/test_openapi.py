"""The OpenAPI 2.0 document: valid Swagger 2.0, covering every route the app registers, and checked in up to date."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import pytest
from openapi_spec_validator import OpenAPIV2SpecValidator, validate

from orchestrators import openapi_api
from shared.api.openapi import PLACEHOLDER_HOST, openapi_document
from shared.config import Settings, get_settings
from shared.core.models import ChangeStatus

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def _http_routes(app: Any) -> set[tuple[str, str]]:
    app.functions_bindings = None  # get_functions() is not idempotent in azure-functions 1.26 (FACTS.md)
    routes = set()
    for function in app.get_functions():
        if function.is_http_function():
            trigger = function.get_trigger()
            for method in trigger.methods or []:
                routes.add((str(getattr(method, "value", method)).lower(), trigger.route))
    app.functions_bindings = None
    return routes


def registered_routes() -> set[tuple[str, str]]:
    """Every (method, route) of the app, plus this document's own blueprint (in case it is not registered yet)."""
    import function_app

    own = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    own.register_functions(openapi_api.bp)
    return _http_routes(function_app.app) | _http_routes(own)


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    base = doc["basePath"].strip("/")
    return {(method, f"{base}{path}") for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_the_document_is_valid_swagger_2() -> None:
    for host in (None, PLACEHOLDER_HOST, "127.0.0.1:7071"):
        doc = openapi_document(host=host)
        assert doc["swagger"] == "2.0"
        validate(doc, cls=OpenAPIV2SpecValidator)


def test_every_api_route_is_documented_and_nothing_else() -> None:
    doc = openapi_document()
    api_routes = {(m, r) for m, r in registered_routes() if r.startswith("api/v1/")}
    assert api_routes - documented(doc) == set()
    assert documented(doc) - api_routes == set()


def test_operation_ids_are_unique_and_operations_complete() -> None:
    doc = openapi_document()
    ids = []
    for item in doc["paths"].values():
        for method, op in item.items():
            assert method in METHODS
            ids.append(op["operationId"])
            assert op["summary"] and op["description"]
            for param in op["parameters"]:
                assert param["x-ms-summary"] and param["description"], (op["operationId"], param["name"])
            templated = set(re.findall(r"{(\w+)}", next(p for p, i in doc["paths"].items() if op in i.values())))
            assert templated == {p["name"] for p in op["parameters"] if p["in"] == "path"}
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", i) for i in ids)


def test_async_pattern_and_idempotency_key() -> None:
    doc = openapi_document()
    submit = doc["paths"]["/changes"]["post"]
    assert submit["x-ms-long-running-operation"] is True
    key = next(p for p in submit["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header" and key["required"] is True and key["x-ms-summary"]
    assert "72 hours" in key["description"]
    for op in (submit, doc["paths"]["/changes/{changeId}"]["get"]):
        assert {"Location", "Retry-After"} <= set(op["responses"]["202"]["headers"])
    assert "200" in doc["paths"]["/changes/{changeId}"]["get"]["responses"]


def test_retention_follows_the_setting_default_and_the_parameter() -> None:
    default = Settings.model_fields["idempotency_retention_hours"].default
    assert f"kept {default} hours" in openapi_document()["info"]["description"]
    doc = openapi_document(retention_hours=24)
    assert "kept 24 hours" in doc["info"]["description"]
    key = next(p for p in doc["paths"]["/changes"]["post"]["parameters"] if p["name"] == "Idempotency-Key")
    assert "kept 24 hours" in key["description"]


def test_status_enum_has_every_state() -> None:
    definitions = openapi_document()["definitions"]
    assert definitions["ChangeStatus"]["properties"]["status"]["enum"] == [s.value for s in ChangeStatus]
    assert len(definitions["ChangeStatus"]["properties"]["status"]["enum"]) == 12
    assert {"type", "title", "status", "detail", "issues", "operationOutcome"} <= set(
        definitions["Problem"]["properties"]
    )


def test_security_and_visibility() -> None:
    doc = openapi_document()
    oauth = doc["securityDefinitions"]["oauth2"]
    assert oauth["flow"] == "accessCode" and oauth["tokenUrl"].endswith("/oauth2/v2.0/token")
    callback = doc["paths"]["/callbacks/approval"]["post"]
    assert callback["x-ms-visibility"] == "internal" and callback["security"] == []
    assert [p["name"] for p in callback["parameters"] if p["in"] != "body"] == ["X-Approval-Token"], "not in the URL"
    moved = doc["paths"]["/changes/{changeId}/approval/callback"]["post"]
    assert moved["deprecated"] is True and list(moved["responses"]) == ["410"]
    assert doc["paths"]["/health"]["get"]["security"] == []


@pytest.mark.parametrize(("host", "schemes"), [("127.0.0.1:7071", ["http", "https"]), ("x.example", ["https"])])
def test_schemes_by_host(host: str, schemes: list[str]) -> None:
    doc = openapi_document(host=host)
    assert doc["host"] == host and doc["schemes"] == schemes


def test_checked_in_document_is_up_to_date() -> None:
    expected = json.dumps(openapi_document(host=PLACEHOLDER_HOST), indent=2, ensure_ascii=False) + "\n"
    assert DOCS.read_text(encoding="utf-8") == expected, (
        "docs/openapi.json is stale: regenerate it with python -m shared.api.openapi > docs/openapi.json"
    )


@pytest.mark.parametrize(
    ("trusted", "host"), [(None, "127.0.0.1:7071"), ("gw.azurewebsites.net", "gw.azurewebsites.net")]
)
def test_the_function_believes_a_forwarded_host_only_from_a_trusted_front(
    monkeypatch: pytest.MonkeyPatch, trusted: str | None, host: str
) -> None:
    if trusted:
        monkeypatch.setenv("WRITEBACK_TRUSTED_FORWARDED_HOSTS", trusted)
    monkeypatch.delenv("WRITEBACK_PUBLIC_BASE_URL", raising=False)
    get_settings.cache_clear()
    function = openapi_api.openapi_json
    user = getattr(function, "get_user_function", lambda: function)()
    req = func.HttpRequest(
        "GET",
        "http://127.0.0.1:7071/api/v1/openapi.json",
        headers={"X-Forwarded-Host": "gw.azurewebsites.net"},
        body=b"",
    )
    try:
        resp = user(req)
    finally:
        get_settings.cache_clear()
    assert resp.status_code == 200
    assert json.loads(resp.get_body())["host"] == host
