"""The writer reads the written resource back when the target's answer has no body, in every Provenance mode,
and counts as downstream calls exactly the calls the target received."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.app.writer import FhirWriter, has_change_tag
from shared.core.models import ChangeRecord, ChangeRequest, ChangeStatus, Operation, PayloadRef, Principal
from shared.core.planning import plan_change
from shared.core.targets import TargetConfig
from shared.fakes.fhir import FakeFhirClient

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def target(provenance: str) -> TargetConfig:
    return TargetConfig.model_validate(
        {
            "id": "ehr",
            "base_url": "http://fake-fhir.local/fhir",
            "provenance": provenance,
            "capabilities": {"return_representation": False},
        }
    )


def record_for(request: ChangeRequest) -> ChangeRecord:
    return ChangeRecord(
        change_id=str(uuid.uuid4()),
        status=ChangeStatus.WRITING,
        target="ehr",
        operation=request.operation,
        resource_type=request.resource_type,
        resource_id=request.resource_id if request.operation is not Operation.CREATE else None,
        requested_by=Principal(app_id="crm", user_id="u-1"),
        submitted_at=NOW,
        updated_at=NOW,
        request_hash="0" * 64,
        payload=PayloadRef(kind="inline", sha256="0" * 64, size=2, inline="{}"),
    )


class TransactionWithoutLocations(FakeFhirClient):
    """A target whose transaction answer entries carry a status and an ETag only (``location`` is optional)."""

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        answer = super().transaction(bundle)
        for entry in answer.get("entry", []):
            entry.get("response", {}).pop("location", None)
        return answer


@pytest.mark.parametrize("provenance", ["transaction", "after", "none"])
def test_an_update_answered_without_a_body_is_read_back(provenance: str) -> None:
    fhir = FakeFhirClient(return_representation=False)
    fhir.update({"resourceType": "Patient", "id": "p1", "gender": "female"})
    current = fhir.read("Patient", "p1").resource
    assert current is not None
    request = ChangeRequest.model_validate(
        {"target": "ehr", "operation": "update", "resource": {**current, "telecom": [{"value": "1"}]}}
    )
    plan = plan_change(request, current=current, current_version=current["meta"]["versionId"])
    record = record_for(request)
    before = len(fhir.calls)
    out = FhirWriter(fhir, target(provenance)).write(record, plan, source="crm", recorded=NOW, reason=None)
    made = fhir.calls[before:]
    assert ("read", "Patient") in made
    assert out.downstream_calls == len(made)
    stored = fhir.read("Patient", "p1").resource
    assert out.written == stored and has_change_tag(out.written, record.change_id)
    assert out.version_id == stored["meta"]["versionId"]  # type: ignore[index]


def test_a_transaction_create_that_names_no_resource_counts_no_read() -> None:
    """Nothing names the created resource (no body, no location, no id planned): no read, and none counted."""
    fhir = TransactionWithoutLocations(return_representation=False)
    request = ChangeRequest.model_validate(
        {"target": "ehr", "operation": "create", "resource": {"resourceType": "Patient", "gender": "male"}}
    )
    plan = plan_change(request, current=None, current_version=None)
    before = len(fhir.calls)
    out = FhirWriter(fhir, target("transaction")).write(
        record_for(request), plan, source="crm", recorded=NOW, reason=None
    )
    made = fhir.calls[before:]
    assert [interaction for interaction, _ in made] == ["transaction"]
    assert out.written is None
    assert out.downstream_calls == len(made)
