"""The writer: meta's elements in the read-back check."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.app.writer import verify, with_tags
from shared.core.models import ChangeRecord, ChangeRequest, ChangeStatus, PayloadRef, Principal
from shared.core.targets import TargetConfig

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


def test_read_back_compares_meta_elements_without_the_gateways_tags() -> None:
    proposed = {"resourceType": "Patient", "meta": {"security": [RESTRICTED], "tag": [{"code": "mine"}]}}
    written = with_tags({**proposed, "meta": {**proposed["meta"], "versionId": "2"}}, "c-1", "crm")
    paths = ["Patient.meta.security", "Patient.meta.tag"]
    assert verify(proposed, written, paths) == []
    relabelled = {**written, "meta": {**written["meta"], "security": [{**RESTRICTED, "code": "N"}]}}
    assert verify(proposed, relabelled, paths) == ["Patient.meta.security"]
    untagged = {**written, "meta": {k: v for k, v in written["meta"].items() if k != "tag"}}
    assert verify(proposed, untagged, paths) == ["Patient.meta.tag"]
