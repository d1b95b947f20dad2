"""One contract suite for the ``FhirClient`` port: the in-memory fake, and the real HTTP client against the local
FHIR server with token checking on (tokens from the real ``ManagedIdentityCredential`` via the local token endpoint).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import reset_token_providers, token_provider_for
from shared.core.errors import ConflictError, NotFoundError
from shared.core.ports import FhirClient
from shared.core.targets import TargetConfig
from shared.fakes.fhir import FakeFhirClient

SCOPE = "api://local-ehr/.default"
MRN = "urn:example:mrn"
TAGS = "urn:example:writeback"


@pytest.fixture(params=["fake", pytest.param("http", marks=pytest.mark.integration)])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FhirClient]:
    if request.param == "fake":
        yield FakeFhirClient()
        return
    token_endpoint = request.getfixturevalue("token_endpoint")
    server = request.getfixturevalue("fhir")
    monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", token_endpoint.identity_header)
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    reset_token_providers()
    target = TargetConfig.model_validate(
        {
            "id": "local-ehr",
            "base_url": server.base_url,
            "auth": {"type": "managed_identity", "scope": SCOPE},
            "timeout_seconds": 10,
        }
    )
    yield HttpFhirClient(target, tokens=token_provider_for(target, managed_identity_client_id=None))
    reset_token_providers()


def patient(family: str = "Doe", *, mrn: str | None = None, tag: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": mrn or uuid.uuid4().hex}],
        "name": [{"family": family, "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1980-02-29",
    }
    if tag:
        resource["meta"] = {"tag": [{"system": TAGS, "code": tag}]}
    return resource


def ref_of(location: str) -> tuple[str, str]:
    """(type, id) from an absolute or relative Location, with or without ``/_history/{vid}``."""
    path = location.split("/_history/")[0].rstrip("/")
    rtype, rid = path.split("/")[-2:]
    return rtype, rid


def test_create_returns_an_opaque_version_and_a_location(client: FhirClient) -> None:
    created = client.create(patient())
    assert created.status == 201
    assert created.resource is not None
    rid = created.resource["id"]
    assert isinstance(created.version_id, str) and created.version_id
    assert created.resource["meta"]["versionId"] == created.version_id
    assert created.location is not None
    assert ref_of(created.location) == ("Patient", rid)
    assert created.etag is not None and created.version_id in created.etag
    assert created.last_modified


def test_create_ignores_a_client_supplied_id(client: FhirClient) -> None:
    created = client.create({**patient(), "id": "client-chosen"})
    assert created.resource is not None
    assert created.resource["id"] != "client-chosen"


def test_read_returns_the_current_version(client: FhirClient) -> None:
    created = client.create(patient("Reader"))
    assert created.resource is not None
    read = client.read("Patient", created.resource["id"])
    assert read.status == 200
    assert read.resource is not None
    assert read.resource["name"][0]["family"] == "Reader"
    assert read.version_id == created.version_id


def test_vread_returns_an_older_version_after_update(client: FhirClient) -> None:
    created = client.create(patient("Before"))
    assert created.resource is not None and created.version_id is not None
    changed = {**created.resource, "name": [{"family": "After", "given": ["Jane"]}]}
    updated = client.update(changed, if_match=created.version_id)
    assert updated.version_id is not None and updated.version_id != created.version_id

    old = client.vread("Patient", created.resource["id"], created.version_id)
    assert old.resource is not None
    assert old.resource["name"][0]["family"] == "Before"
    assert old.version_id == created.version_id
    new = client.vread("Patient", created.resource["id"], updated.version_id)
    assert new.resource is not None
    assert new.resource["name"][0]["family"] == "After"


def test_vread_of_an_unknown_version_is_not_found(client: FhirClient) -> None:
    created = client.create(patient())
    assert created.resource is not None
    with pytest.raises(NotFoundError):
        client.vread("Patient", created.resource["id"], uuid.uuid4().hex)


def test_update_with_current_if_match_succeeds_and_stale_one_conflicts(client: FhirClient) -> None:
    created = client.create(patient("One"))
    assert created.resource is not None and created.version_id is not None
    rid = created.resource["id"]
    # an already-quoted ETag is accepted as well as a bare version id
    first = client.update({**created.resource, "gender": "other"}, if_match=f'W/"{created.version_id}"')
    assert first.status == 200
    assert first.resource is not None and first.resource["gender"] == "other"
    assert first.version_id not in (None, created.version_id)

    with pytest.raises(ConflictError) as info:
        client.update({**created.resource, "gender": "male"}, if_match=created.version_id)
    assert info.value.downstream_status == 412
    current = client.read("Patient", rid)
    assert current.resource is not None and current.resource["gender"] == "other"
    assert current.version_id == first.version_id


def test_patch_with_if_match(client: FhirClient) -> None:
    created = client.create(patient("Patchy"))
    assert created.resource is not None and created.version_id is not None
    rid = created.resource["id"]
    ops = [{"op": "replace", "path": "/name/0/family", "value": "Patched"}]
    patched = client.patch("Patient", rid, ops, if_match=created.version_id)
    assert patched.status == 200
    assert patched.version_id not in (None, created.version_id)
    assert client.read("Patient", rid).resource["name"][0]["family"] == "Patched"  # type: ignore[index]

    with pytest.raises(ConflictError):
        client.patch(
            "Patient", rid, [{"op": "replace", "path": "/gender", "value": "male"}], if_match=created.version_id
        )
    assert client.read("Patient", rid).resource["gender"] == "female"  # type: ignore[index]


def test_if_none_exist_on_an_identifier_creates_once(client: FhirClient) -> None:
    mrn = uuid.uuid4().hex
    criteria = f"identifier={MRN}|{mrn}"
    first = client.create(patient("Once", mrn=mrn), if_none_exist=criteria)
    second = client.create(patient("Once", mrn=mrn), if_none_exist=criteria)
    assert first.status == 201
    assert second.status == 200
    assert first.resource is not None and second.resource is not None
    assert second.resource["id"] == first.resource["id"]
    assert second.version_id == first.version_id
    bundle = client.search("Patient", {"identifier": f"{MRN}|{mrn}"})
    assert bundle["resourceType"] == "Bundle"
    assert [e["resource"]["id"] for e in bundle.get("entry", [])] == [first.resource["id"]]


def test_search_by_tag(client: FhirClient) -> None:
    change = uuid.uuid4().hex
    a = client.create(patient("A", tag=change))
    b = client.create(patient("B", tag=change))
    client.create(patient("C", tag="other-" + change))
    bundle = client.search("Patient", {"_tag": f"{TAGS}|{change}"})
    ids = sorted(e["resource"]["id"] for e in bundle.get("entry", []))
    assert a.resource is not None and b.resource is not None
    assert ids == sorted([a.resource["id"], b.resource["id"]])
    assert client.search("Patient", {"_tag": f"{TAGS}|nothing-{change}"}).get("entry", []) == []


def test_read_of_a_missing_id_is_not_found(client: FhirClient) -> None:
    with pytest.raises(NotFoundError) as info:
        client.read("Patient", "does-not-exist-" + uuid.uuid4().hex[:8])
    assert getattr(info.value, "downstream_status", None) == 404


def test_transaction_with_two_creates(client: FhirClient) -> None:
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": patient_urn},
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": patient_urn, "resource": patient("Txn"), "request": {"method": "POST", "url": "Patient"}},
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    result = client.transaction(bundle)
    assert result["resourceType"] == "Bundle"
    assert result["type"] == "transaction-response"
    entries = result["entry"]
    assert len(entries) == 2
    assert all(re.match(r"^201\b", e["response"]["status"]) for e in entries)
    (ptype, pid), (otype, oid) = (ref_of(e["response"]["location"]) for e in entries)
    assert (ptype, otype) == ("Patient", "Observation")
    assert client.read("Patient", pid).resource["name"][0]["family"] == "Txn"  # type: ignore[index]
    stored = client.read("Observation", oid).resource
    assert stored is not None
    assert stored["subject"]["reference"] == f"Patient/{pid}"  # urn:uuid rewritten


def test_transaction_patch_with_if_match(client: FhirClient) -> None:
    created = client.create(patient("Bundled"))
    assert created.resource is not None and created.version_id is not None
    rid = created.resource["id"]
    ops = [{"op": "replace", "path": "/name/0/family", "value": "BundlePatched"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": binary,
                "request": {"method": "PATCH", "url": f"Patient/{rid}", "ifMatch": f'W/"{created.version_id}"'},
            }
        ],
    }
    result = client.transaction(bundle)
    assert result["entry"][0]["response"]["status"].startswith("200")
    assert client.read("Patient", rid).resource["name"][0]["family"] == "BundlePatched"  # type: ignore[index]
