"""The local FHIR R4 server (Medplum's router over memory): REST behaviour, token check, validation, test controls."""

from __future__ import annotations

import base64
import functools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tools.services.fhir_server import FhirServer
from tools.services.token_endpoint import TokenEndpoint

pytestmark = pytest.mark.integration

AUDIENCE = "api://local-ehr"
MRN = "urn:oid:1.2.36.146.595.217.0.1"
JSON_PATCH = "application/json-patch+json"


# Clients are shared per module because creating an httpx client costs about 20 ms (SSL context set-up).
@pytest.fixture(scope="module")
def anonymous(fhir_server: FhirServer) -> Iterator[httpx.Client]:
    """A client that never sends credentials."""
    with httpx.Client(base_url=fhir_server.base_url, timeout=5.0) as c:
        yield c


@pytest.fixture(scope="module")
def shared_client(fhir_server: FhirServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fhir_server.base_url, timeout=5.0) as c:
        yield c


@pytest.fixture
def client(shared_client: httpx.Client, fhir: FhirServer, fhir_token: str) -> httpx.Client:
    """A client with a valid token, against an emptied server."""
    shared_client.headers.update({"Authorization": f"Bearer {fhir_token}", "Content-Type": "application/fhir+json"})
    return shared_client


def patient(mrn: str = "12345", **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}], **fields}


def create(client: httpx.Client, resource: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = client.post(f"/{resource['resourceType']}", json=resource, **kwargs)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def etag(resource: dict[str, Any]) -> str:
    return f'W/"{resource["meta"]["versionId"]}"'


def assert_outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


# --- bearer tokens -------------------------------------------------------------------------------------------------


def sign(key_pem: bytes, kid: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"aud": AUDIENCE, "iss": "test", "sub": "test", "iat": now, "nbf": now, "exp": now + 600, **overrides}
    return jwt.encode(claims, key_pem, algorithm="RS256", headers={"kid": kid})


def unsigned(kid: str) -> str:
    """An ``alg: none`` token with otherwise good claims."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'kid': kid})}.{part({'aud': AUDIENCE, 'exp': int(time.time()) + 600})}."


@functools.cache
def other_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def endpoint_kid(token_endpoint: TokenEndpoint) -> str:
    kid: str = httpx.get(token_endpoint.jwks_url).json()["keys"][0]["kid"]
    return kid


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda pem, kid: None, id="missing"),
        pytest.param(lambda pem, kid: "not-a-jwt", id="garbage"),
        pytest.param(lambda pem, kid: sign(pem, kid, exp=int(time.time()) - 3600), id="expired"),
        pytest.param(lambda pem, kid: sign(pem, kid, nbf=int(time.time()) + 3600), id="not-yet-valid"),
        pytest.param(lambda pem, kid: sign(pem, kid, aud="api://someone-else"), id="wrong-audience"),
        pytest.param(lambda pem, kid: sign(pem, "unknown-kid"), id="unknown-kid"),
        pytest.param(lambda pem, kid: sign(other_key_pem(), kid), id="bad-signature"),
        pytest.param(lambda pem, kid: unsigned(kid), id="alg-none"),
    ],
)
def test_bad_tokens_get_401(
    fhir: FhirServer, anonymous: httpx.Client, token_key_file: Path, endpoint_kid: str, make_token: Any
) -> None:
    token = make_token(token_key_file.read_bytes(), endpoint_kid)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    response = anonymous.get("/Patient", headers=headers)

    assert_outcome(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_good_tokens_pass_and_health_and_metadata_need_none(
    fhir: FhirServer, anonymous: httpx.Client, fhir_token: str, token_key_file: Path, endpoint_kid: str
) -> None:
    own = sign(token_key_file.read_bytes(), endpoint_kid, aud=[AUDIENCE, "other"])
    for token in (fhir_token, own):
        assert anonymous.get("/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert anonymous.get(fhir.base_url.replace("/fhir/R4", "/healthz")).json() == {"status": "ok"}
    assert anonymous.get("/metadata").json()["fhirVersion"] == "4.0.1"


# --- REST ----------------------------------------------------------------------------------------------------------


def test_create_answers_201_with_location_etag_and_the_resource(client: httpx.Client, fhir: FhirServer) -> None:
    response = client.post("/Patient", json=patient(gender="female"))

    assert response.status_code == 201
    body = response.json()
    version = body["meta"]["versionId"]
    assert not version.isdigit()  # opaque (UUID) version ids
    assert response.headers["location"] == f"{fhir.base_url}/Patient/{body['id']}/_history/{version}"
    assert response.headers["etag"] == f'W/"{version}"'
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert body["gender"] == "female"


def test_prefer_return_minimal_gives_an_empty_body(client: httpx.Client) -> None:
    response = client.post("/Patient", json=patient(), headers={"Prefer": "return=minimal"})

    assert response.status_code == 201
    assert response.content == b""
    assert "/_history/" in response.headers["location"]


def test_read_update_if_match_vread_and_history(client: httpx.Client) -> None:
    v1 = create(client, patient(gender="male"))
    url = f"/Patient/{v1['id']}"

    read = client.get(url)
    assert read.json() == v1
    assert read.headers["etag"] == etag(v1)

    updated = client.put(url, json={**v1, "gender": "female"}, headers={"If-Match": etag(v1)})
    assert updated.status_code == 200
    v2 = updated.json()
    assert v2["meta"]["versionId"] != v1["meta"]["versionId"]
    assert updated.headers["etag"] == etag(v2)

    stale = client.put(url, json={**v1, "gender": "other"}, headers={"If-Match": etag(v1)})
    assert_outcome(stale, 412)
    assert client.get(url).json()["gender"] == "female"

    old = client.get(f"{url}/_history/{v1['meta']['versionId']}")
    assert old.status_code == 200 and old.json()["gender"] == "male"

    for _ in range(2):  # reading history twice must not reorder it
        history = client.get(f"{url}/_history").json()
        assert history["type"] == "history"
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == [
            v2["meta"]["versionId"],
            v1["meta"]["versionId"],
        ]

    assert_outcome(client.get("/Patient/does-not-exist"), 404)


def test_conditional_create_returns_the_existing_resource(client: httpx.Client) -> None:
    condition = {"If-None-Exist": f"identifier={MRN}|777"}
    first = client.post("/Patient", json=patient("777"), headers=condition)
    second = client.post("/Patient", json=patient("777", gender="male"), headers=condition)

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json() == first.json()
    assert client.get("/Patient", params={"identifier": f"{MRN}|777"}).json()["total"] == 1


def test_json_patch_honours_if_match_and_validation(client: httpx.Client) -> None:
    v1 = create(client, patient(gender="male"))
    url = f"/Patient/{v1['id']}"

    def patch(ops: list[dict[str, Any]], if_match: str | None = None) -> httpx.Response:
        headers = {"Content-Type": JSON_PATCH, **({"If-Match": if_match} if if_match else {})}
        return client.patch(url, content=json.dumps(ops), headers=headers)

    patched = patch([{"op": "replace", "path": "/gender", "value": "female"}], etag(v1))
    assert patched.status_code == 200, patched.text
    assert patched.json()["gender"] == "female"

    assert_outcome(patch([{"op": "replace", "path": "/gender", "value": "other"}], etag(v1)), 412)
    assert_outcome(patch([{"op": "replace", "path": "/gender", "value": "robot"}]), 400)
    assert_outcome(patch([{"op": "add", "path": "/active", "value": "yes"}]), 400)
    assert client.get(url).json() == patched.json()


def test_search_by_identifier_and_tag(client: httpx.Client) -> None:
    tag = {"system": "urn:writeback:source", "code": "gateway"}
    tagged = create(client, patient("1", meta={"tag": [tag]}))
    create(client, patient("2"))

    by_identifier = client.get("/Patient", params={"identifier": f"{MRN}|2"}).json()
    assert by_identifier["total"] == 1
    assert by_identifier["entry"][0]["resource"]["identifier"][0]["value"] == "2"
    assert by_identifier["entry"][0]["fullUrl"].endswith(f"/Patient/{by_identifier['entry'][0]['resource']['id']}")

    by_tag = client.get("/Patient", params={"_tag": f"{tag['system']}|{tag['code']}"}).json()
    assert [e["resource"]["id"] for e in by_tag["entry"]] == [tagged["id"]]
    assert client.get("/Patient", params={"_tag": "urn:writeback:source|other"}).json()["total"] == 0

    # An unknown parameter is refused rather than matching nothing (which would defeat If-None-Exist).
    assert_outcome(client.get("/Patient", params={"identifer": f"{MRN}|2"}), 400)


def test_tag_search_sees_only_current_versions_and_other_filters(client: httpx.Client) -> None:
    # the server answers exact `_tag` searches from an index: it must agree with a full scan
    tag = {"system": "urn:writeback:change", "code": "Change-ABC"}
    query = {"_tag": "URN:writeback:change|change-abc"}  # token search ignores case
    first = create(client, patient("t1", meta={"tag": [tag]}))
    second = create(client, patient("t2", gender="female", meta={"tag": [tag]}))
    create(client, patient("t3"))

    assert sorted(e["resource"]["id"] for e in client.get("/Patient", params=query).json()["entry"]) == sorted(
        [first["id"], second["id"]]
    )
    assert client.get("/Patient", params={**query, "gender": "female"}).json()["total"] == 1
    assert client.get("/Patient", params={**query, "_count": "1"}).json()["total"] == 2
    untagged = client.put(f"/Patient/{first['id']}", json={**first, "meta": {}}).json()
    assert "tag" not in untagged["meta"]
    assert [e["resource"]["id"] for e in client.get("/Patient", params=query).json()["entry"]] == [second["id"]]
    client.delete(f"/Patient/{second['id']}")
    assert client.get("/Patient", params=query).json()["total"] == 0
    assert client.get("/Observation", params=query).json()["total"] == 0


def test_transaction_rewrites_urn_uuid_references(client: httpx.Client) -> None:
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": patient("tx-1"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|tx-1"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "heart rate"},
                    "subject": {"reference": patient_urn},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }

    response = client.post("", json=bundle)

    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    patient_entry, observation_entry = result["entry"]
    assert [patient_entry["response"]["status"], observation_entry["response"]["status"]] == ["201", "201"]
    patient_id = patient_entry["resource"]["id"]
    assert observation_entry["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    assert observation_entry["response"]["etag"] == etag(observation_entry["resource"])
    assert "/_history/" in observation_entry["response"]["location"]

    again = client.post("", json=bundle).json()
    assert again["entry"][0]["response"]["status"] == "200"
    assert again["entry"][0]["resource"]["id"] == patient_id


def test_transaction_with_a_stale_if_match_changes_nothing(client: httpx.Client) -> None:
    v1 = create(client, patient(gender="male"))
    v2 = client.put(f"/Patient/{v1['id']}", json={**v1, "gender": "female"}).json()
    other = create(client, patient("other-before-tx"))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient("new-in-tx"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {**other, "gender": "other"}, "request": {"method": "PUT", "url": f"Patient/{other['id']}"}},
            {
                "resource": {**v2, "gender": "other"},
                "request": {"method": "PUT", "url": f"Patient/{v1['id']}", "ifMatch": etag(v1)},
            },
        ],
    }

    assert_outcome(client.post("", json=bundle), 412)
    # nothing of the transaction is left: not the create, not the update that succeeded before the stale one
    assert client.get("/Patient", params={"identifier": f"{MRN}|new-in-tx"}).json()["total"] == 0
    assert client.get(f"/Patient/{v1['id']}").json() == v2
    assert client.get(f"/Patient/{other['id']}").json() == other
    assert client.get(f"/Patient/{other['id']}/_history").json()["total"] == 1
    assert client.get(f"/Patient/{v1['id']}/_history").json()["total"] == 2
    del bundle["entry"][1]

    bundle["entry"][1]["request"]["ifMatch"] = etag(v2)
    assert client.post("", json=bundle).status_code == 200
    assert client.get(f"/Patient/{v1['id']}").json()["gender"] == "other"


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(patient(gender="robot"), id="code-not-in-required-value-set"),
        pytest.param(patient(active="yes"), id="wrong-type"),
        pytest.param(patient(nickname="Bob"), id="unknown-element"),
        pytest.param(patient(birthDate="1990-13-45"), id="bad-date"),
        pytest.param({"resourceType": "Observation", "code": {"text": "x"}}, id="missing-required-status"),
        pytest.param(patient(id="has spaces"), id="bad-id"),
    ],
)
def test_invalid_resources_get_400(client: httpx.Client, resource: dict[str, Any]) -> None:
    outcome = assert_outcome(client.post(f"/{resource['resourceType']}", json=resource), 400)
    assert outcome["issue"][0]["severity"] == "error"
    assert client.get(f"/{resource['resourceType']}").json()["total"] == 0


# --- test controls -------------------------------------------------------------------------------------------------


def test_injected_429_with_retry_after_then_normal(client: httpx.Client, fhir: FhirServer) -> None:
    fhir.inject(429, count=2, retry_after=3)

    for _ in range(2):
        response = client.get("/Patient")
        assert_outcome(response, 429)
        assert response.headers["retry-after"] == "3"
    assert client.get("/Patient").status_code == 200


def test_injected_503_only_for_chosen_methods(client: httpx.Client, fhir: FhirServer) -> None:
    fhir.inject(503, methods=["PUT"])

    created = create(client, patient())
    assert client.get(f"/Patient/{created['id']}").status_code == 200
    assert_outcome(client.put(f"/Patient/{created['id']}", json=created), 503)
    assert client.put(f"/Patient/{created['id']}", json=created).status_code == 200


def test_injected_delay(client: httpx.Client, fhir: FhirServer) -> None:
    fhir.inject(delay_ms=300)

    started = time.monotonic()
    assert client.get("/Patient").status_code == 200
    assert time.monotonic() - started >= 0.3

    started = time.monotonic()
    assert client.get("/Patient").status_code == 200
    assert time.monotonic() - started < 0.3


def test_delay_after_the_write_times_the_client_out_but_the_write_happens(
    client: httpx.Client, fhir: FhirServer
) -> None:
    fhir.inject(delay_ms=1000, methods=["POST"], after=True)

    with pytest.raises(httpx.ReadTimeout):
        client.post("/Patient", json=patient("ambiguous"), timeout=0.2)

    assert client.get("/Patient", params={"identifier": f"{MRN}|ambiguous"}).json()["total"] == 1


def test_stats_count_requests_and_reset_empties_everything(client: httpx.Client, fhir: FhirServer) -> None:
    fhir.inject(503, count=5)
    created_before_reset = client.post("/Patient", json=patient())
    assert created_before_reset.status_code == 503
    fhir.clear_faults()
    created = create(client, patient())
    client.get(f"/Patient/{created['id']}")
    client.get("/Patient")

    stats = fhir.stats()
    assert stats["requests"] == 4
    assert stats["byMethod"] == {"POST": 2, "GET": 2}
    assert stats["byStatus"] == {"503": 1, "201": 1, "200": 2}

    fhir.inject(503, count=5)
    fhir.reset()

    assert fhir.stats()["requests"] == 0
    assert_outcome(client.get(f"/Patient/{created['id']}"), 404)
    assert client.get("/Patient").json()["total"] == 0
    stats = fhir.stats()
    assert (stats["requests"], stats["byMethod"], stats["byStatus"]) == (2, {"GET": 2}, {"404": 1, "200": 1})
    assert stats["faultsServed"] == 0 and stats["pendingFaults"] == []
