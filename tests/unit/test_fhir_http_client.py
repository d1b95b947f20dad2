"""What the HTTP FHIR client puts on the wire and how it reads responses, against an in-process HTTP double
(``httpx.MockTransport``). The behaviour against a real server is in tests/contract and tests/integration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.adapters.fhir_http import HttpFhirClient, shared_http_client
from shared.core.errors import ConfigurationError, ConflictError, PermanentError, RetryableError
from shared.core.targets import TargetConfig

BASE = "https://ehr.example/fhir/R4"


class StaticTokens:
    def token(self, scope: str) -> str:
        return f"token-for-{scope}"


class Server:
    """Records the requests it received and answers with ``reply``."""

    def __init__(self, reply: Callable[[httpx.Request], httpx.Response]) -> None:
        self.reply = reply
        self.received: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request)
        return self.reply(request)


def make(reply: Callable[[httpx.Request], httpx.Response], **target: Any) -> tuple[HttpFhirClient, Server]:
    server = Server(reply)
    config = TargetConfig.model_validate(
        {
            "id": "ehr",
            "base_url": BASE + "/",
            "auth": {"type": "managed_identity", "scope": "api://ehr/.default"},
            **target,
        }
    )
    client = HttpFhirClient(config, http=httpx.Client(transport=httpx.MockTransport(server)), tokens=StaticTokens())
    return client, server


def created(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    resource = {**body, "id": "p1", "meta": {"versionId": "0012"}}
    return httpx.Response(
        201,
        json=resource,
        headers={
            "ETag": 'W/"0012"',
            "Location": f"{BASE}/Patient/p1/_history/0012",
            "Last-Modified": "Wed, 25 Nov 2026 12:00:00 GMT",
        },
    )


def test_create_sends_fhir_headers_token_and_no_client_id() -> None:
    client, server = make(created)
    response = client.create(
        {"resourceType": "Patient", "id": "mine", "name": [{"family": "Doe"}]},
        if_none_exist="identifier=urn:mrn|1",
    )
    (request,) = server.received
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/Patient"
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert request.headers["Prefer"] == "return=representation"
    assert request.headers["If-None-Exist"] == "identifier=urn:mrn|1"
    assert request.headers["Authorization"] == "Bearer token-for-api://ehr/.default"
    assert "id" not in json.loads(request.content)
    timeout = request.extensions["timeout"]
    assert timeout["connect"] == 5.0 and timeout["read"] == 30.0
    # versions stay opaque strings: "0012" is not 12
    assert response.version_id == "0012"
    assert response.etag == 'W/"0012"'
    assert response.location == f"{BASE}/Patient/p1/_history/0012"
    assert response.last_modified == "Wed, 25 Nov 2026 12:00:00 GMT"
    assert response.headers["etag"] == 'W/"0012"'


def test_update_and_patch_send_weak_if_match() -> None:
    client, server = make(lambda r: httpx.Response(200, json={"resourceType": "Patient", "id": "p1"}))
    client.update({"resourceType": "Patient", "id": "p1"}, if_match="abc-1")
    client.update({"resourceType": "Patient", "id": "p1"}, if_match='W/"abc-2"')
    client.patch("Patient", "p1", [{"op": "remove", "path": "/gender"}], if_match='"abc-3"')
    put1, put2, patch = server.received
    assert (put1.method, str(put1.url), put1.headers["If-Match"]) == ("PUT", f"{BASE}/Patient/p1", 'W/"abc-1"')
    assert put2.headers["If-Match"] == 'W/"abc-2"'
    assert patch.method == "PATCH"
    assert patch.headers["Content-Type"] == "application/json-patch+json"
    assert patch.headers["If-Match"] == 'W/"abc-3"'
    assert json.loads(patch.content) == [{"op": "remove", "path": "/gender"}]


def test_no_prefer_header_when_the_target_does_not_support_it() -> None:
    def minimal(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, headers={"Location": f"{BASE}/Patient/p9/_history/v-9"})

    client, server = make(minimal, capabilities={"return_representation": False})
    response = client.create({"resourceType": "Patient"})
    assert "Prefer" not in server.received[0].headers
    assert response.resource is None
    assert response.version_id == "v-9"  # from Location when there is no ETag or body


def test_version_falls_back_to_meta_version_id() -> None:
    client, _ = make(
        lambda r: httpx.Response(200, json={"resourceType": "Patient", "id": "p1", "meta": {"versionId": "7"}})
    )
    assert client.read("Patient", "p1").version_id == "7"


def test_search_and_vread_urls() -> None:
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    client, server = make(
        lambda r: httpx.Response(200, json=bundle if "_history" not in r.url.path else {"resourceType": "Patient"})
    )
    assert client.search("Patient", {"identifier": "urn:mrn|1", "_tag": "urn:t|x"}) == bundle
    client.vread("Patient", "p1", 'W/"v2"')
    search, vread = server.received
    assert search.url.path == "/fhir/R4/Patient"
    assert dict(search.url.params) == {"identifier": "urn:mrn|1", "_tag": "urn:t|x"}
    assert vread.url.path == "/fhir/R4/Patient/p1/_history/v2"


def test_errors_come_from_the_one_mapping() -> None:
    client, _ = make(lambda r: httpx.Response(412))
    with pytest.raises(ConflictError):
        client.update({"resourceType": "Patient", "id": "p1"}, if_match="1")

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client, _ = make(timeout)
    with pytest.raises(RetryableError) as info:
        client.search("Patient", {"identifier": "urn:mrn|SECRET-MRN"})
    assert "SECRET-MRN" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unsafe_ids_are_refused_before_sending() -> None:
    client, server = make(created)
    for rtype, rid in (("Patient", "../Observation/1"), ("patient", "p1"), ("Patient", "a" * 65), ("Patient", "")):
        with pytest.raises(PermanentError):
            client.read(rtype, rid)
    assert server.received == []


def test_a_target_with_auth_needs_a_token_provider() -> None:
    config = TargetConfig.model_validate(
        {"id": "ehr", "base_url": BASE, "auth": {"type": "managed_identity", "scope": "api://ehr/.default"}}
    )
    with pytest.raises(ConfigurationError):
        HttpFhirClient(config)


def test_one_shared_http_client_per_process() -> None:
    assert shared_http_client() is shared_http_client()
