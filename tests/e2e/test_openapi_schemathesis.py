"""Property-based tests of the running gateway from its OpenAPI document (schemathesis).

Schemathesis generates requests (valid and invalid) for every operation of the document and checks that none
answers 5xx and that each documented response conforms to its schema. Calls carry the Easy Auth header of an app
holding all four roles. Operations are collected from the document the code generates (schemathesis'
``from_fixture`` lazy loading does not work with pytest 9); the first test checks that the gateway serves exactly
that document, so the run is the served document's.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, cast

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


def _served_document(gateway: Gateway, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The document the gateway serves at /openapi.json; an assertion error when it cannot be fetched."""
    served = httpx.get(f"{gateway.api}/openapi.json", headers=headers, timeout=10)
    assert served.status_code == 200, f"GET /openapi.json answered {served.status_code}: {served.text[:500]}"
    document: dict[str, Any] = served.json()
    return document


@pytest.fixture(scope="module")
def auth_headers(gateway: Gateway) -> dict[str, str]:
    return gateway.headers("schemathesis", ALL_ROLES, user="fuzzer")


@pytest.fixture(scope="module")
def served_document(gateway: Gateway) -> dict[str, Any]:
    """Fails every generated case, rather than skipping any, when the gateway does not serve its document."""
    return _served_document(gateway)


def test_gateway_serves_the_generated_document(gateway: Gateway) -> None:
    assert _served_document(gateway) == openapi_document(host=_host(gateway))
    untrusted = _served_document(gateway, {"X-Forwarded-Host": "gw.example"})
    assert untrusted["host"] == _host(gateway), "a forwarded host from an untrusted front is not believed"


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_gateway_conforms_to_its_openapi_document(
    case: Any, gateway: Gateway, auth_headers: dict[str, str], served_document: dict[str, Any]
) -> None:
    response = case.call_and_validate(
        base_url=gateway.api,
        headers=auth_headers,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )
    if case.operation.definition.raw.get("operationId") == "GetOpenApiDocument" and case.method.upper() == "GET":
        # A 404 is undocumented, so the schema check alone would let it through. (Schemathesis also sends
        # methods the operation does not declare, such as TRACE, which may answer 404 or 405.)
        assert response.status_code == 200, (response.request.url, response.text)


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_gateway_without_the_document_fails_the_run() -> None:
    """A gateway answering 404 for /openapi.json must fail the document test, not skip or xfail it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        stub = cast(Gateway, SimpleNamespace(api=f"http://127.0.0.1:{server.server_port}/api/v1"))
        try:
            test_gateway_serves_the_generated_document(stub)
        except AssertionError:
            pass
        except BaseException as exc:  # pytest's skip and xfail outcomes are BaseExceptions
            pytest.fail(f"a 404 for /openapi.json ended the test with {type(exc).__name__}, not a failure")
        else:
            pytest.fail("a 404 for /openapi.json passed the test")
    finally:
        server.shutdown()
        server.server_close()
