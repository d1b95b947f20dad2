"""The payload purge over the fakes: WRITEBACK_PAYLOAD_RETENTION_DAYS after a change ended, what callers sent (the
request body, the planned resource, the diff's values, approval and resolution comments) is gone from the record,
its payloads and its status, while the lineage (paths, hashes, versions, actors) stays; a change that has not ended
is never purged; a purged change cannot be retried or resolved (409 payload-purged); and the purge finds its
candidates by key range and schedule, not by reading the whole changes table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.api.caller_identity import encode_easyauth_principal
from shared.api.openapi import openapi_document
from shared.api.status_view import lineage_body, status_body
from shared.app.approvals import Approver
from shared.app.journal import Step
from shared.app.operations import ReplayFilter
from shared.app.retention import PURGED_EVENT, PayloadPurger
from shared.bootstrap import Gateway
from shared.config import Settings
from shared.core.change_ids import new_change_id
from shared.core.errors import PermanentError
from shared.core.models import ChangeRecord, ChangeStatus, Principal
from shared.core.record_parts import ChangePlan, Resolution
from shared.fakes.fhir import FakeFhirClient
from shared.fakes.stores import FakeChangeStore, FakePayloadStore, FakeRetentionState
from tests.fake_gateway import fake_gateway
from tests.records import a_change_record
from tests.support import ManualClock, from_threads

START = datetime(2026, 11, 25, 12, tzinfo=UTC)
RETENTION = timedelta(days=30)
PHONE = "555-CANARY-1234"
FAMILY = "CANARYFAMILY"
REASON = "CANARY-REASON"
COMMENT = "CANARY-COMMENT"
CANARIES = (PHONE, FAMILY, REASON, COMMENT)
REQUESTER = Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"])
REVIEWER = Principal(app_id="portal", user_id="rev1", roles=["Writeback.Approve"])
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Tester", "given": ["Pat"]}],
    "telecom": [{"system": "phone", "value": "555-0000", "use": "home"}],
}
OPERATOR = {
    "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("ops", ["Writeback.Operate"], user_id="op1"),
    "Content-Type": "application/json",
}
APPROVER = {
    "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("portal", ["Writeback.Approve"], user_id="rev1"),
    "Content-Type": "application/json",
}


class World:
    """A gateway over the fakes with a FHIR server holding Patient/p1, a clock the test moves, and a purger."""

    def __init__(self, *, inline_max_bytes: int = 30_000, limit: int = 2000) -> None:
        self.clock = ManualClock(START)
        self.fhir = FakeFhirClient(clock=self.clock)
        self.fhir.update(PATIENT)
        self.payloads = FakePayloadStore(inline_max_bytes=inline_max_bytes)
        self.changes = FakeChangeStore()
        self.retention = FakeRetentionState()
        self.gateway: Gateway = fake_gateway(
            clock=self.clock,
            fhir=lambda target: self.fhir,
            payload_store=self.payloads,
            change_store=self.changes,
            retention_state=self.retention,
        )
        self.purger = self.another_purger(limit=limit)
        self.changes_made = 0

    def another_purger(self, *, limit: int = 2000) -> PayloadPurger:
        """A purger of its own (another instance's) over the same stores."""
        return PayloadPurger(
            self.gateway.journal, self.payloads, self.retention, retention=RETENTION, limit=limit, clock=self.clock
        )

    def at(self, when: datetime) -> World:
        self.clock.now = when
        return self

    def submit(self, patch: list[dict[str, Any]], *, key: str | None = None) -> str:
        body = {"target": "local-ehr", "operation": "patch", "resourceRef": "Patient/p1", "patch": patch}
        body["reason"] = f"the patient called in: {REASON}"
        accepted = self.gateway.intake.submit(REQUESTER, key or str(self.clock.now), json.dumps(body).encode())
        return accepted.change.change_id

    def completed_with_approval(self) -> str:
        """A change that needed approval (a name), approved with a comment, written: ``completed``. Each call sets
        other values (the canaries with a number), so that none is a change to nothing."""
        self.changes_made += 1
        change_id = self.submit(
            [
                {"op": "replace", "path": "/telecom/0/value", "value": f"{PHONE}-{self.changes_made}"},
                {"op": "replace", "path": "/name/0/family", "value": f"{FAMILY}{self.changes_made}"},
            ]
        )
        assert self.gateway.pipeline.prepare(change_id)["status"] == "awaiting_approval"
        self.gateway.approvals.decide(change_id, "approve", Approver.of(REVIEWER), f"looks right {COMMENT}")
        assert self.gateway.pipeline.write(change_id)["status"] == "completed"
        return change_id

    def awaiting_approval(self) -> str:
        change_id = self.submit([{"op": "replace", "path": "/name/0/family", "value": FAMILY}])
        assert self.gateway.pipeline.prepare(change_id)["status"] == "awaiting_approval"
        return change_id

    def record(self, change_id: str) -> ChangeRecord:
        record = self.changes.get(change_id)
        assert record is not None
        return record

    def everything_stored(self, change_id: str) -> str:
        """The change's record and lineage rows as stored, its payload blobs, and its status and lineage bodies."""
        record = self.record(change_id)
        events = self.changes.lineage(change_id)
        blobs = [self.payloads.get(ref).decode() for ref in _blob_refs(record) if ref.blob_name in self._blobs()]
        return json.dumps(
            [
                record.model_dump(mode="json", by_alias=True),
                [e.model_dump(mode="json", by_alias=True) for e in events],
                blobs,
                status_body(record, "http://gw"),
                lineage_body(change_id, events),
            ]
        )

    def _blobs(self) -> list[str]:
        return self.payloads.blob_names()


def _blob_refs(record: ChangeRecord) -> list[Any]:
    refs = [record.payload, record.plan.proposed if record.plan else None]
    return [r for r in refs if r is not None and r.kind == "blob"]


def events_of(world: World, change_id: str) -> list[str]:
    return [e.event for e in world.changes.lineage(change_id)]


@pytest.mark.parametrize("inline_max_bytes", [30_000, 0], ids=["inline", "blob"])
def test_a_change_ended_longer_ago_than_the_retention_loses_every_value_and_keeps_its_lineage(
    inline_max_bytes: int,
) -> None:
    world = World(inline_max_bytes=inline_max_bytes)
    change_id = world.completed_with_approval()
    stored = world.everything_stored(change_id)
    assert all(canary in stored for canary in (PHONE, FAMILY, COMMENT))  # all there before
    if inline_max_bytes == 0:
        assert world.payloads.blob_names() == [
            f"changes/{change_id}/proposed.json",
            f"changes/{change_id}/request.json",
        ]
    before = world.record(change_id)
    lineage_before = world.changes.lineage(change_id)

    result = world.purger.purge(START + RETENTION + timedelta(hours=2))

    assert result.purged == 1
    stored = world.everything_stored(change_id)
    assert not [canary for canary in CANARIES if canary in stored]
    assert world.payloads.blob_names() == []
    after = world.record(change_id)
    assert after.payload_purged_at == START + RETENTION + timedelta(hours=2)
    assert after.status is ChangeStatus.COMPLETED and after.updated_at == before.updated_at
    # What stays: paths, hashes, versions, decisions, actors, outcomes.
    assert after.plan is not None and before.plan is not None
    assert after.plan.diff == [{"op": op["op"], "path": op["path"]} for op in before.plan.diff]
    assert after.plan.changed_paths == before.plan.changed_paths == ["Patient.name", "Patient.telecom"]
    assert after.plan.current_version == before.plan.current_version
    assert after.payload.sha256 == before.payload.sha256 and after.request_hash == before.request_hash
    assert after.approval is not None and after.approval.decided_by == "rev1" and after.approval.comment is None
    assert after.result == before.result
    # The lineage: every event as it was, and one more saying what was removed (no values).
    lineage = world.changes.lineage(change_id)
    assert lineage[:-1] == lineage_before
    purged = lineage[-1]
    assert purged.event == PURGED_EVENT and purged.actor == "gateway"
    assert purged.details == {
        "retentionDays": 30,
        "endedAt": before.updated_at.isoformat(),
        "removed": ["request", "diffValues", "proposed", "approvalComment"],
    }
    body = status_body(after, "http://gw")
    assert body["payloadPurged"] is True and body["payloadPurgedAt"] == after.payload_purged_at.isoformat()
    assert body["plan"]["diff"] == [
        {"op": "replace", "path": "/name/0/family"},
        {"op": "replace", "path": "/telecom/0/value"},
    ]


def test_the_status_says_when_nothing_was_purged() -> None:
    world = World()
    change_id = world.completed_with_approval()
    assert status_body(world.record(change_id), "http://gw")["payloadPurged"] is False


def test_a_change_is_purged_only_once_its_retention_has_passed() -> None:
    world = World()
    change_id = world.completed_with_approval()

    world.purger.purge(START + RETENTION - timedelta(minutes=1))
    assert world.record(change_id).payload_purged_at is None
    world.purger.purge(START + RETENTION + timedelta(hours=2))
    assert world.record(change_id).payload_purged_at is not None


def test_a_change_that_has_not_ended_is_never_purged_and_is_purged_the_retention_after_it_ends() -> None:
    world = World()
    change_id = world.awaiting_approval()
    before = world.record(change_id)

    for days in (31, 45, 60):
        world.purger.purge(START + timedelta(days=days))
        assert world.record(change_id) == before  # not touched at all

    world.at(START + timedelta(days=61))
    world.gateway.approvals.decide(change_id, "reject", Approver.of(REVIEWER), COMMENT)  # ends now
    world.purger.purge(START + timedelta(days=61 + 29))
    assert world.record(change_id).payload_purged_at is None
    world.purger.purge(START + timedelta(days=61 + 30, hours=2))
    purged = world.record(change_id)
    assert purged.payload_purged_at is not None and purged.status is ChangeStatus.REJECTED
    assert COMMENT not in world.everything_stored(change_id) and FAMILY not in world.everything_stored(change_id)


def test_a_change_retried_after_it_ended_counts_its_retention_from_its_last_end() -> None:
    world = World()
    change_id = world.submit([{"op": "replace", "path": "/telecom/0/value", "value": PHONE}])
    world.fhir.fail_next(PermanentError(detail="GET Patient: HTTP 400", downstream_status=400), interactions=["read"])
    assert world.gateway.pipeline.prepare(change_id)["status"] == "failed"
    world.at(START + timedelta(days=20))
    world.gateway.operations.retry(change_id, "op1")
    assert world.gateway.pipeline.prepare(change_id)["status"] == "writing"
    assert world.gateway.pipeline.write(change_id)["status"] == "completed"

    world.purger.purge(START + RETENTION + timedelta(hours=2))  # read by key range: ended 20 days ago, scheduled
    assert world.record(change_id).payload_purged_at is None
    assert [e.change_id for e in world.retention.scheduled()] == [change_id]
    world.purger.purge(START + timedelta(days=50, minutes=1))  # due: purged by name
    assert world.record(change_id).payload_purged_at is not None
    assert world.retention.scheduled() == []


def test_the_purge_is_idempotent_and_two_instances_at_once_purge_once() -> None:
    world = World()
    change_ids = [world.at(START + timedelta(minutes=i)).completed_with_approval() for i in range(5)]
    when = START + RETENTION + timedelta(hours=3)
    purgers = [world.purger, world.another_purger()]

    results = from_threads(lambda: purgers.pop().purge(when), 2)
    world.purger.purge(when)  # and once more

    assert sum(r.purged for r in results) == 5
    for change_id in change_ids:
        assert events_of(world, change_id).count(PURGED_EVENT) == 1


def test_the_purge_reads_each_change_by_key_range_once_not_the_whole_table() -> None:
    world = World()
    old = [world.at(START + timedelta(minutes=i)).completed_with_approval() for i in range(3)]
    world.at(START + timedelta(days=10))
    young = world.completed_with_approval()

    first = world.purger.purge(START + RETENTION + timedelta(hours=2))
    second = world.purger.purge(START + RETENTION + timedelta(hours=3))

    assert first.purged == 3
    assert second.read == 0 and second.purged == 0  # the cursor moved past them; the young one is not old enough
    assert all(world.record(c).payload_purged_at for c in old) and world.record(young).payload_purged_at is None
    later = world.purger.purge(START + timedelta(days=40, hours=2))
    assert later.read == 1 and later.purged == 1


def test_the_first_run_covers_changes_kept_before_whatever_their_id_and_stops_at_its_limit() -> None:
    world = World(limit=2)
    journal = world.gateway.journal
    # Ids that tell no time (a release before ids were time-ordered), ended long ago, with values in their plans.
    for change_id in ("0b7d3c2e-legacy", "f3a9e1d0-legacy", "c5e2aa10-legacy"):
        opened = journal.open(a_change_record(change_id, at=START), Step("accepted"))
        plan = ChangePlan(diff=[{"op": "replace", "path": "/telecom/0/value", "value": PHONE}])
        journal.record(opened, [Step("failed")], status=ChangeStatus.FAILED, plan=plan)
    when = START + RETENTION + timedelta(days=1)

    runs = [world.purger.purge(when) for _ in range(3)]

    assert [r.read for r in runs] == [2, 1, 0]
    for change_id in ("0b7d3c2e-legacy", "f3a9e1d0-legacy", "c5e2aa10-legacy"):
        assert world.record(change_id).payload_purged_at is not None
        assert PHONE not in world.everything_stored(change_id)


def test_a_purged_change_cannot_be_retried_or_resolved_409_payload_purged() -> None:
    world = World()
    change_id = new_change_id(START)
    opened = world.gateway.journal.open(a_change_record(change_id, at=START), Step("accepted"))
    plan = ChangePlan(diff=[{"op": "replace", "path": "/telecom/0/value", "value": PHONE}])
    world.gateway.journal.record(opened, [Step("conflict")], status=ChangeStatus.CONFLICT, plan=plan)
    world.purger.purge(START + RETENTION + timedelta(hours=2))
    purged = world.record(change_id)
    assert purged.payload_purged_at is not None
    api = world.gateway.operations_api

    answers = [
        api.retry(OPERATOR, change_id, b"", "http://gw"),
        api.resolve(APPROVER, change_id, b'{"action": "replan"}', "http://gw"),
        api.resolve(APPROVER, change_id, f'{{"action": "discard", "comment": "{COMMENT}"}}'.encode(), "http://gw"),
    ]

    for answer in answers:
        assert answer.status == 409, answer.body
        assert answer.body["type"] == "urn:writeback:problem:payload-purged"
        assert "WRITEBACK_PAYLOAD_RETENTION_DAYS" in answer.body["detail"]
    assert world.record(change_id) == purged  # nothing moved
    replay = world.gateway.operations.replay(ReplayFilter(status=ChangeStatus.CONFLICT), "op1", dry_run=False)
    assert replay["skipped"] == [change_id] and replay["retried"] == []


def test_a_resolution_comment_is_purged_with_the_rest() -> None:
    world = World()
    change_id = new_change_id(START)
    opened = world.gateway.journal.open(a_change_record(change_id, at=START), Step("accepted"))
    resolution = Resolution(action="discard", by="rev1", at=START, comment=COMMENT)
    world.gateway.journal.record(opened, [Step("discarded")], status=ChangeStatus.CANCELLED, resolution=resolution)

    world.purger.purge(START + RETENTION + timedelta(hours=2))

    record = world.record(change_id)
    assert record.resolution == Resolution(action="discard", by="rev1", at=START)
    assert COMMENT not in world.everything_stored(change_id)
    assert world.changes.lineage(change_id)[-1].details["removed"] == ["request", "resolutionComment"]


def test_the_retention_setting_defaults_to_30_days_and_is_at_least_one() -> None:
    assert Settings().payload_retention_days == 30
    assert Settings(payload_retention_days=1).payload_retention_days == 1
    with pytest.raises(ValidationError, match="payload_retention_days"):
        Settings(payload_retention_days=0)


def test_the_composition_root_builds_the_purger_from_the_setting() -> None:
    gateway = fake_gateway(settings={"payload_retention_days": 7})
    assert gateway.payload_purger.retention == timedelta(days=7)


def test_the_openapi_document_names_the_field_and_the_409() -> None:
    document = openapi_document()
    status = document["definitions"]["ChangeStatus"]
    assert status["properties"]["payloadPurged"]["type"] == "boolean" and "payloadPurged" in status["required"]
    assert status["properties"]["payloadPurgedAt"]["format"] == "date-time"
    for path in ("/changes/{changeId}/retry", "/changes/{changeId}/resolve"):
        operation = document["paths"][path]["post"]
        assert "payload-purged" in operation["responses"]["409"]["description"]
        assert "WRITEBACK_PAYLOAD_RETENTION_DAYS" in operation["description"]
