"""What was stored before a release still works after it: idempotency fingerprints, actors, and the one hash form.

- An idempotency key claimed with a fingerprint computed before the canonical-JSON code moved still replays.
- Lineage hashes use the same canonical form as fingerprints (UTF-8 as is), so a diff with non-ASCII text hashes
  the same everywhere.
- The ``accepted`` event names its actor as every other event does (``Principal.actor``).
- A change record stored before its plan, approval, result, error and resolution were typed loads, and is stored
  again unchanged (keys this version does not know included).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.bootstrap import Gateway, build
from shared.config import Settings
from shared.core.canonical import canonical_hash
from shared.core.models import ChangeRecord, IdempotencyRecord, Principal
from shared.fakes.fhir import FakeFhirClient
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
CRM = Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"])
BODY = json.dumps(
    {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [{"op": "replace", "path": "/name/0/given/0", "value": "Zoë"}],
    },
    ensure_ascii=False,
).encode()
# The fingerprint the intake of the previous release stored for BODY (sha256 of its canonical JSON).
FINGERPRINT_STORED_BEFORE = "571c701d4103d6d213ca24167dae791843395dd6a6fc304a5f231b2ac7d89d59"


def gateway_over(
    idempotency: FakeIdempotencyStore, changes: FakeChangeStore, fhir: FakeFhirClient | None = None
) -> Gateway:
    return build(
        Settings(targets_file=REPO / "config" / "targets.yaml", policy_file=REPO / "config" / "policy.yaml"),
        idempotency_store=idempotency,
        change_store=changes,
        payload_store=FakePayloadStore(),
        publisher=FakeMessagePublisher(),
        sweep_state=FakeSweepState(),
        fhir=lambda _: fhir,
        clock=lambda: NOW,
    )


def test_a_key_stored_by_the_previous_release_still_replays() -> None:
    idempotency, changes = FakeIdempotencyStore(), FakeChangeStore()
    intake = gateway_over(idempotency, changes).intake
    first = intake.submit(CRM, "fresh", BODY)
    idempotency.claim(
        IdempotencyRecord(
            caller=CRM.caller_key,
            key="old-key",
            fingerprint=FINGERPRINT_STORED_BEFORE,
            change_id=first.change.change_id,
            created_at=NOW - timedelta(hours=1),
            expires_at=NOW + timedelta(hours=71),
            state="completed",
            response_status=202,
        )
    )

    replay = intake.submit(CRM, "old-key", BODY)

    assert replay.replayed and replay.change.change_id == first.change.change_id


def test_the_accepted_event_names_the_caller_as_every_other_event_does() -> None:
    changes = FakeChangeStore()
    accepted = gateway_over(FakeIdempotencyStore(), changes).intake.submit(CRM, "k", BODY)

    events = changes.lineage(accepted.change.change_id)

    assert events[0].event == "accepted" and events[0].actor == CRM.actor == "u1"
    as_app = Principal(app_id="crm", roles=["Writeback.Submit"])
    assert as_app.actor == "app:crm"


def test_the_diff_hash_is_the_canonical_hash_of_the_diff() -> None:
    fhir = FakeFhirClient()
    fhir.update({"resourceType": "Patient", "id": "p1", "name": [{"given": ["Zoe"]}]})
    changes = FakeChangeStore()
    gateway = gateway_over(FakeIdempotencyStore(), changes, fhir)
    change_id = gateway.intake.submit(CRM, "k", BODY).change.change_id

    gateway.pipeline.prepare(change_id)

    record = changes.get(change_id)
    assert record is not None
    planned = next(e for e in changes.lineage(change_id) if e.event == "planned")
    assert planned.details["diffHash"] == canonical_hash(record.to_wire()["plan"]["diff"])


# A record as the previous release stored it (the JSON in the Table row's ``Json`` property), every part filled in.
RECORD_STORED_BEFORE: dict[str, Any] = {
    "changeId": "20261201120000000-abc",
    "status": "rejected",
    "target": "local-ehr",
    "operation": "update",
    "resourceType": "Patient",
    "resourceId": "p1",
    "requestedBy": {"appId": "crm", "userId": "u1", "roles": ["Writeback.Submit"], "authType": "easyauth"},
    "submittedAt": "2026-12-01T12:00:00Z",
    "updatedAt": "2026-12-01T12:05:00Z",
    "requestHash": "a" * 64,
    "payload": {"kind": "inline", "sha256": "b" * 64, "size": 2, "inline": "{}"},
    "dryRun": False,
    "enqueued": True,
    "retries": 1,
    "replan": False,
    "sequence": 9,
    "plan": {
        "baseVersion": None,
        "currentVersion": "3",
        "changedPaths": ["Patient.name"],
        "diff": [{"op": "replace", "path": "/name/0/family", "value": "Zoë"}],
        "merged": False,
        "downstreamPaths": [],
        "decision": "approve",
        "reasons": [{"path": "Patient.name", "rule": "approve", "message": "needs a person"}],
        "policyVersion": "2026-11-25.1",
        "source": "crm",
        "proposed": {"kind": "blob", "sha256": "c" * 64, "size": 40000, "blobName": "x/proposed.json"},
        "conflict": {"ours": ["Patient.name"], "theirs": [], "overlap": []},
    },
    "approval": {
        "required": True,
        "expiresAt": "2026-12-04T12:00:00+00:00",
        "paths": ["Patient.name"],
        "decision": "rejected",
        "decidedBy": "boss",
        "decidedByName": None,
        "decidedAt": "2026-12-01T12:04:00.123456+00:00",
        "via": "api",
        "comment": None,
        "notedBy": "a key a later version added",
    },
    "result": {"versionId": "3", "noChange": True, "verified": True},
    "error": {
        "type": "urn:writeback:problem:rejected-by-approver",
        "title": "Rejected by an approver",
        "status": 403,
        "detail": "An approver rejected this change",
        "issues": [{"path": "/x", "code": "y", "message": "z"}],
    },
    "resolution": {"action": "replan", "by": "ops", "at": "2026-12-01T12:03:00+00:00", "comment": "go"},
}


def test_a_record_stored_by_the_previous_release_loads_typed_and_is_stored_unchanged() -> None:
    record = ChangeRecord.model_validate(RECORD_STORED_BEFORE)
    assert (
        record.plan is not None and record.plan.conflict is not None and record.plan.conflict.ours == ["Patient.name"]
    )
    assert record.approval is not None and record.approval.expires_at == datetime(2026, 12, 4, 12, tzinfo=UTC)
    assert record.error is not None and record.error.code == "rejected-by-approver"
    assert record.resolution is not None and record.resolution.action == "replan"
    assert record.model_dump(mode="json", by_alias=True, exclude_none=True) == RECORD_STORED_BEFORE
