"""The writer against the real local FHIR server: Provenance modes, and a write repeated after it succeeded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import reset_token_providers, token_provider_for
from shared.app.writer import CHANGE_TAG_SYSTEM, FhirWriter, IfMatchUnavailableError, WriteOutcome
from shared.core.errors import ConflictError
from shared.core.models import ChangeRecord, ChangeRequest, ChangeStatus, Operation, PayloadRef, Principal
from shared.core.planning import plan_change
from shared.core.targets import TargetConfig

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
A_PATIENT_CREATE = {"operation": "create", "resource": {"resourceType": "Patient", "gender": "male"}}


@pytest.fixture
def client_for(fhir: Any, token_endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", token_endpoint.identity_header)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    reset_token_providers()

    def make(provenance: str) -> tuple[HttpFhirClient, TargetConfig]:
        target = TargetConfig.model_validate(
            {
                "id": "local-ehr",
                "base_url": fhir.base_url,
                "auth": {"type": "managed_identity", "scope": "api://local-ehr/.default"},
                "provenance": provenance,
            }
        )
        return HttpFhirClient(target, tokens=token_provider_for(target, managed_identity_client_id=None)), target

    return make


def record_for(request: ChangeRequest) -> ChangeRecord:
    return ChangeRecord(
        change_id=str(uuid.uuid4()),
        status=ChangeStatus.WRITING,
        target="local-ehr",
        operation=request.operation,
        resource_type=request.resource_type,
        resource_id=request.resource_id if request.operation is not Operation.CREATE else None,
        requested_by=Principal(app_id="crm", user_id="u-1", display_name="Casey"),
        submitted_at=NOW,
        updated_at=NOW,
        request_hash="0" * 64,
        payload=PayloadRef(kind="inline", sha256="0" * 64, size=2, inline="{}"),
    )


def write_twice(
    client: HttpFhirClient, target: TargetConfig, body: dict[str, Any], current: dict[str, Any] | None = None
) -> tuple[ChangeRecord, WriteOutcome, WriteOutcome]:
    """Plan the change ``body`` on ``current`` and write it twice, as an activity run twice would: the record, and
    the first and the second outcome."""
    request = ChangeRequest.model_validate({"target": "local-ehr", **body})
    plan = plan_change(request, current=current, current_version=current["meta"]["versionId"] if current else None)
    record = record_for(request)
    writer = FhirWriter(client, target)
    first = writer.write(record, plan, source="crm", recorded=NOW, reason=None)
    again = writer.write(record, plan, source="crm", recorded=NOW, reason=None)
    return record, first, again


def seed(client: HttpFhirClient) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": f"w-{uuid.uuid4().hex[:10]}", "gender": "female"}
    return client.update(patient).resource or {}


def test_after_mode_writes_then_names_the_new_version(client_for: Any, fhir: Any) -> None:
    client, target = client_for("after")
    current = seed(client)
    request = ChangeRequest.model_validate(
        {
            "target": "local-ehr",
            "operation": "update",
            "resource": {**current, "telecom": [{"system": "phone", "value": "1"}]},
            "reason": "why",
        }
    )
    plan = plan_change(request, current=current, current_version=current["meta"]["versionId"])
    record = record_for(request)
    out = FhirWriter(client, target).write(record, plan, source="crm", recorded=NOW, reason="why")
    assert out.version_id and out.version_id != current["meta"]["versionId"]
    assert out.downstream_calls == 2  # write (representation returned) + Provenance
    prov = client.read("Provenance", out.provenance.split("/")[1]).resource  # type: ignore[union-attr]
    assert prov is not None
    assert prov["target"][0]["reference"] == f"Patient/{current['id']}/_history/{out.version_id}"
    assert [a["type"]["coding"][0]["code"] for a in prov["agent"]] == ["author", "enterer", "transmitter"]
    assert prov["reason"][0]["text"] == "why"


@pytest.mark.parametrize("mode", ["after", "transaction"])
def test_a_repeated_write_is_recognised_not_duplicated(client_for: Any, fhir: Any, fhir_token: str, mode: str) -> None:
    client, target = client_for(mode)
    current = seed(client)
    body = {"operation": "update", "resource": {**current, "gender": "other"}}
    record, first, again = write_twice(client, target, body, current)
    assert again.already_applied and again.version_id == first.version_id
    assert again.provenance == first.provenance
    versions = httpx.get(
        f"{fhir.base_url}/Patient/{current['id']}/_history",
        headers={"Authorization": f"Bearer {fhir_token}"},
    ).json()["entry"]
    assert len(versions) == 2
    provenances = client.search("Provenance", {"_tag": f"{CHANGE_TAG_SYSTEM}|{record.change_id}"}).get("entry", [])
    assert len(provenances) == 1


@pytest.mark.parametrize("mode", ["after", "transaction"])
def test_a_repeated_create_returns_the_first(client_for: Any, mode: str) -> None:
    client, target = client_for(mode)
    record, first, again = write_twice(client, target, A_PATIENT_CREATE)
    assert first.resource_id and again.resource_id == first.resource_id
    found = client.search("Patient", {"_tag": f"{CHANGE_TAG_SYSTEM}|{record.change_id}"}).get("entry", [])
    assert len(found) == 1


def test_a_real_conflict_is_not_mistaken_for_a_repeat(client_for: Any) -> None:
    client, target = client_for("transaction")
    current = seed(client)
    client.update({**current, "gender": "unknown"})  # someone else writes first
    request = ChangeRequest.model_validate(
        {"target": "local-ehr", "operation": "update", "resource": {**current, "gender": "other"}}
    )
    plan = plan_change(request, current=current, current_version=current["meta"]["versionId"])
    with pytest.raises(ConflictError):
        FhirWriter(client, target).write(record_for(request), plan, source="crm", recorded=NOW, reason=None)


def test_without_conditional_create_a_repeated_create_searches_first(client_for: Any) -> None:
    client, target = client_for("after")
    target = target.model_copy(
        update={"capabilities": target.capabilities.model_copy(update={"conditional_create": False})}
    )
    record, first, again = write_twice(client, target, A_PATIENT_CREATE)
    assert again.resource_id == first.resource_id
    assert len(client.search("Patient", {"_tag": f"{CHANGE_TAG_SYSTEM}|{record.change_id}"}).get("entry", [])) == 1
    assert len(client.search("Provenance", {"_tag": f"{CHANGE_TAG_SYSTEM}|{record.change_id}"}).get("entry", [])) == 1


@pytest.mark.parametrize("mode", ["after", "transaction"])
def test_a_resource_read_without_a_version_gets_no_unconditional_write(client_for: Any, mode: str) -> None:
    client, target = client_for(mode)
    current = seed(client)
    unversioned = {k: v for k, v in current.items() if k != "meta"}  # as a target that returns no version
    request = ChangeRequest.model_validate(
        {"target": "local-ehr", "operation": "update", "resource": {**unversioned, "gender": "other"}}
    )
    plan = plan_change(request, current=unversioned, current_version=None)
    with pytest.raises(IfMatchUnavailableError, match=r"returned no version .*capabilities\.if_match"):
        FhirWriter(client, target).write(record_for(request), plan, source="crm", recorded=NOW, reason=None)
    versions = client.versions("Patient", current["id"])
    assert [v["gender"] for v in versions] == ["female"]
