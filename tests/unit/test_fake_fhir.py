"""What the in-memory FHIR fake does beyond the shared contract: injected failures, atomic transactions,
opaque (non-integer) versions, and the refusals a real server would give."""

from __future__ import annotations

import re
from typing import Any

import pytest

from shared.core.errors import ConflictError, NotFoundError, PermanentError, RetryableError
from shared.fakes.fhir import FakeFhirClient

MRN = "urn:example:mrn"


def patient(mrn: str = "1", family: str = "Doe") -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}], "name": [{"family": family}]}


def test_versions_are_opaque_hex_not_integers() -> None:
    fake = FakeFhirClient()
    created = fake.create(patient())
    assert created.version_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", created.version_id)
    assert created.resource is not None and created.resource["meta"]["lastUpdated"].endswith("Z")


def test_fail_next_fails_the_next_calls_then_recovers() -> None:
    fake = FakeFhirClient()
    fake.fail_next(RetryableError(detail="throttled", downstream_status=429, retry_after=1), count=2)
    for _ in range(2):
        with pytest.raises(RetryableError):
            fake.create(patient())
    assert fake.resources() == []
    fake.create(patient())
    assert len(fake.resources("Patient")) == 1


def test_fail_next_can_target_one_interaction() -> None:
    fake = FakeFhirClient()
    fake.fail_next(RetryableError(detail="down"), interactions=["update"])
    created = fake.create(patient())  # not an update: unaffected
    assert created.resource is not None
    with pytest.raises(RetryableError):
        fake.update(created.resource)
    assert fake.update(created.resource).status == 200


def test_failure_after_apply_loses_the_response_but_keeps_the_write() -> None:
    fake = FakeFhirClient()
    fake.fail_next(RetryableError(detail="timed out"), after_apply=True)
    with pytest.raises(RetryableError):
        fake.create(patient("42"), if_none_exist=f"identifier={MRN}|42")
    assert len(fake.resources("Patient")) == 1
    again = fake.create(patient("42"), if_none_exist=f"identifier={MRN}|42")  # the idempotent retry
    assert again.status == 200
    assert len(fake.resources("Patient")) == 1


def test_if_none_exist_with_several_matches_is_a_conflict() -> None:
    fake = FakeFhirClient()
    fake.create(patient("7"))
    fake.create(patient("7"))
    with pytest.raises(ConflictError) as info:
        fake.create(patient("7"), if_none_exist=f"identifier={MRN}|7")
    assert info.value.downstream_status == 412


def test_if_match_on_a_missing_resource_is_not_found_and_update_without_it_creates() -> None:
    fake = FakeFhirClient()
    with pytest.raises(NotFoundError):
        fake.update({**patient(), "id": "p1"}, if_match="abc")
    created = fake.update({**patient(), "id": "p1"})
    assert created.status == 201
    assert fake.read("Patient", "p1").version_id == created.version_id


def test_transaction_is_all_or_nothing() -> None:
    fake = FakeFhirClient()
    existing = fake.create(patient("1"))
    assert existing.resource is not None
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient("2"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {**existing.resource, "name": [{"family": "Late"}]},
                "request": {"method": "PUT", "url": f"Patient/{existing.resource['id']}", "ifMatch": 'W/"stale"'},
            },
        ],
    }
    with pytest.raises(ConflictError):
        fake.transaction(bundle)
    assert [r["identifier"][0]["value"] for r in fake.resources("Patient")] == ["1"]
    assert fake.read("Patient", existing.resource["id"]).version_id == existing.version_id


def test_without_return_representation_writes_return_no_body() -> None:
    fake = FakeFhirClient(return_representation=False)
    created = fake.create(patient())
    assert created.resource is None
    assert created.version_id is not None and created.location is not None
    rid = created.location.split("/_history/")[0].rsplit("/", 1)[1]
    assert fake.read("Patient", rid).resource is not None


def test_refusals_a_server_would_give() -> None:
    fake = FakeFhirClient()
    created = fake.create(patient())
    assert created.resource is not None
    rid = created.resource["id"]
    with pytest.raises(PermanentError):
        fake.search("Patient", {"name": "Doe"})  # not a parameter the fake (or the gateway) relies on
    with pytest.raises(PermanentError):
        fake.patch("Patient", rid, [{"op": "test", "path": "/name/0/family", "value": "Other"}])
    with pytest.raises(PermanentError):
        fake.patch("Patient", rid, [{"op": "replace", "path": "/id", "value": "other"}])
    with pytest.raises(PermanentError):
        fake.create({"name": "no resourceType"})
    assert fake.history("Patient", rid) == [created.resource]
