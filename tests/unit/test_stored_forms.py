"""What was stored before a release still works after it: idempotency fingerprints, actors, and the one hash form.

- An idempotency key claimed with a fingerprint computed before the canonical-JSON code moved still replays.
- Lineage hashes use the same canonical form as fingerprints (UTF-8 as is), so a diff with non-ASCII text hashes
  the same everywhere.
- The ``accepted`` event names its actor as every other event does (``Principal.actor``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.app.pipeline import ChangePipeline
from shared.core.canonical import canonical_hash
from shared.core.models import IdempotencyRecord, Principal
from shared.core.policy import Policy
from shared.core.targets import TargetRegistry
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


def intake_over(
    idempotency: FakeIdempotencyStore, changes: FakeChangeStore, payloads: FakePayloadStore
) -> IntakeService:
    return IntakeService(
        idempotency=idempotency,
        journal=ChangeJournal(changes, clock=lambda: NOW),
        payloads=payloads,
        publisher=FakeMessagePublisher(),
        targets=TargetRegistry.from_file(REPO / "config" / "targets.yaml", {}),
        max_body_bytes=10_000,
        retention=timedelta(hours=72),
        sweep_state=FakeSweepState(),
        sweep_grace=timedelta(minutes=15),
        clock=lambda: NOW,
    )


def test_a_key_stored_by_the_previous_release_still_replays() -> None:
    idempotency, changes = FakeIdempotencyStore(), FakeChangeStore()
    intake = intake_over(idempotency, changes, FakePayloadStore())
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
    accepted = intake_over(FakeIdempotencyStore(), changes, FakePayloadStore()).submit(CRM, "k", BODY)

    events = changes.lineage(accepted.change.change_id)

    assert events[0].event == "accepted" and events[0].actor == CRM.actor == "u1"
    as_app = Principal(app_id="crm", roles=["Writeback.Submit"])
    assert as_app.actor == "app:crm"


def test_the_diff_hash_is_the_canonical_hash_of_the_diff() -> None:
    idempotency, changes, payloads = FakeIdempotencyStore(), FakeChangeStore(), FakePayloadStore()
    fhir = FakeFhirClient()
    fhir.update({"resourceType": "Patient", "id": "p1", "name": [{"given": ["Zoe"]}]})
    change_id = intake_over(idempotency, changes, payloads).submit(CRM, "k", BODY).change.change_id
    targets = TargetRegistry.from_file(REPO / "config" / "targets.yaml", {})
    pipeline = ChangePipeline(
        journal=ChangeJournal(changes, clock=lambda: NOW),
        payloads=payloads,
        targets=targets,
        policy=Policy.from_file(REPO / "config" / "policy.yaml"),
        fhir=lambda _: fhir,
        clock=lambda: NOW,
    )

    pipeline.prepare(change_id)

    record = changes.get(change_id)
    assert record is not None
    planned = next(e for e in changes.lineage(change_id) if e.event == "planned")
    assert planned.details["diffHash"] == canonical_hash(record.to_wire()["plan"]["diff"])
