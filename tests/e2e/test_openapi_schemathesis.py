"""Property-based tests of the running gateway from its OpenAPI document (schemathesis).

Schemathesis generates requests (valid and invalid) for every operation of the document and checks that none
answers 5xx and that each documented response conforms to its schema. Calls carry the Easy Auth header of an app
holding all four roles. Operations are collected from the document the code generates (schemathesis'
``from_fixture`` lazy loading does not work with pytest 9); the first test checks that the gateway serves exactly
that document, so the run is the served document's.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from shared.api.openapi import openapi_document
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

ALL_ROLES = ["Writeback.Submit", "Writeback.Audit", "Writeback.Approve", "Writeback.Operate"]
MAX_EXAMPLES = 15

schema = schemathesis.openapi.from_dict(openapi_document(host="127.0.0.1"))


def _host(gateway: Gateway) -> str:
    return gateway.api.split("://", 1)[1].split("/", 1)[0]


@pytest.fixture(scope="module")
def auth_headers(gateway: Gateway) -> dict[str, str]:
    return gateway.headers("schemathesis", ALL_ROLES, user="fuzzer")


def test_gateway_serves_the_generated_document(gateway: Gateway) -> None:
    served = httpx.get(f"{gateway.api}/openapi.json", timeout=10)
    if served.status_code == 404:
        pytest.xfail("orchestrators.openapi_api.bp is not registered in function_app.py yet")
    assert served.status_code == 200, served.text
    assert served.json() == openapi_document(host=_host(gateway))
    forwarded = httpx.get(f"{gateway.api}/openapi.json", headers={"X-Forwarded-Host": "gw.example"}, timeout=10)
    assert forwarded.json()["host"] == "gw.example"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_gateway_conforms_to_its_openapi_document(case: Any, gateway: Gateway, auth_headers: dict[str, str]) -> None:
    if (
        case.operation.definition.raw.get("operationId") == "GetOpenApiDocument"
        and httpx.get(f"{gateway.api}/openapi.json", timeout=10).status_code == 404
    ):
        pytest.skip("orchestrators.openapi_api.bp is not registered in function_app.py yet")
    case.call_and_validate(
        base_url=gateway.api,
        headers=auth_headers,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )
