"""The writer over the fake FHIR server: only version-checked updates, and meta's elements in the read-back check."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.app.writer import FhirWriter, IfMatchUnavailableError, verify, with_tags
from shared.core.models import ChangeRecord, ChangeRequest, ChangeStatus, PayloadRef, Principal
from shared.core.planning import plan_change
from shared.core.targets import TargetConfig
from shared.fakes.fhir import FakeFhirClient

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}


def target(provenance: str, **capabilities: Any) -> TargetConfig:
    return TargetConfig.model_validate(
        {"id": "ehr", "base_url": "http://fake-fhir.local/fhir", "provenance": provenance, "capabilities": capabilities}
    )


def record(request: ChangeRequest) -> ChangeRecord:
    return ChangeRecord(
        change_id="c-1",
        status=ChangeStatus.WRITING,
        target="ehr",
        operation=request.operation,
        resource_type=request.resource_type,
        resource_id=request.resource_id,
        requested_by=Principal(app_id="crm"),
        submitted_at=NOW,
        updated_at=NOW,
        request_hash="0" * 64,
        payload=PayloadRef(kind="inline", sha256="0" * 64, size=2, inline="{}"),
    )


@pytest.mark.parametrize("provenance", ["transaction", "after", "none"])
@pytest.mark.parametrize("operation", ["update", "patch"])
def test_a_target_without_if_match_is_never_written_unconditionally(provenance: str, operation: str) -> None:
    fhir = FakeFhirClient()
    current = fhir.update({"resourceType": "Patient", "id": "p1", "gender": "female"}).resource
    assert current is not None
    body: dict[str, Any] = (
        {"resource": {**current, "gender": "other"}}
        if operation == "update"
        else {"resourceRef": "Patient/p1", "patch": [{"op": "replace", "path": "/gender", "value": "other"}]}
    )
    request = ChangeRequest.model_validate({"target": "ehr", "operation": operation, **body})
    plan = plan_change(request, current=current, current_version=current["meta"]["versionId"])
    writer = FhirWriter(fhir, target(provenance, if_match=False))
    with pytest.raises(IfMatchUnavailableError) as raised:
        writer.write(record(request), plan, source="crm", recorded=NOW, reason=None)
    assert raised.value.code == "if-match-unavailable"
    assert [i.path for i in raised.value.issues] == ["targets.ehr.capabilities.if_match"]
    assert [v["gender"] for v in fhir.history("Patient", "p1")] == ["female"]


def test_a_create_needs_no_if_match() -> None:
    fhir = FakeFhirClient()
    request = ChangeRequest.model_validate(
        {"target": "ehr", "operation": "create", "resource": {"resourceType": "Patient", "gender": "other"}}
    )
    plan = plan_change(request, current=None, current_version=None)
    out = FhirWriter(fhir, target("after", if_match=False)).write(
        record(request), plan, source="crm", recorded=NOW, reason=None
    )
    assert out.resource_id is not None and fhir.resources("Patient")[0]["gender"] == "other"


def test_read_back_compares_meta_elements_without_the_gateways_tags() -> None:
    proposed = {"resourceType": "Patient", "meta": {"security": [RESTRICTED], "tag": [{"code": "mine"}]}}
    written = with_tags({**proposed, "meta": {**proposed["meta"], "versionId": "2"}}, "c-1", "crm")
    paths = ["Patient.meta.security", "Patient.meta.tag"]
    assert verify(proposed, written, paths) == []
    relabelled = {**written, "meta": {**written["meta"], "security": [{**RESTRICTED, "code": "N"}]}}
    assert verify(proposed, relabelled, paths) == ["Patient.meta.security"]
    untagged = {**written, "meta": {k: v for k, v in written["meta"].items() if k != "tag"}}
    assert verify(proposed, untagged, paths) == ["Patient.meta.tag"]
