"""Intake against the fakes of our ports: the outbox, crash recovery under the same key, the sweeper, the purge."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.app.maintenance import OutboxSweeper, purge_idempotency_keys
from shared.core.errors import IdempotencyKeyInUseError, IdempotencyKeyMismatchError, RetryableError
from shared.core.models import ChangeStatus, IdempotencyRecord, Principal
from shared.core.targets import TargetRegistry
from shared.fakes.counting import CountingProxy
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState

REPO = Path(__file__).resolve().parents[2]
CRM = Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"])
BODY = json.dumps(
    {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555"}],
    }
).encode()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def parts(clock: Clock) -> tuple[IntakeService, FakeIdempotencyStore, FakeChangeStore, FakeMessagePublisher]:
    idem, changes, publisher = FakeIdempotencyStore(), FakeChangeStore(), FakeMessagePublisher()
    intake = IntakeService(
        idempotency=idem,
        journal=ChangeJournal(changes, clock=clock),
        payloads=FakePayloadStore(),
        publisher=publisher,
        targets=TargetRegistry.from_file(REPO / "config" / "targets.yaml", {}),
        max_body_bytes=10_000,
        retention=timedelta(hours=72),
        sweep_state=FakeSweepState(),
        sweep_grace=timedelta(minutes=15),
        clock=clock,
    )
    return intake, idem, changes, publisher


def sweeper(intake: IntakeService) -> OutboxSweeper:
    return OutboxSweeper(
        intake,
        intake.sweep_state,
        publish_after=timedelta(seconds=60),
        stuck_after=timedelta(minutes=30),
        grace=timedelta(minutes=15),
    )


def test_the_intake_claims_stores_and_publishes_in_two_table_round_trips(parts) -> None:
    """Before the 202: the claim, then the record with its first lineage event; the index and the enqueued mark
    are left to the pipeline's first step (and the sweeper)."""
    intake, idem, changes, publisher = parts
    calls: Counter[str] = Counter()
    intake.idempotency = CountingProxy(idem, calls, "idempotency")
    intake.journal = ChangeJournal(CountingProxy(changes, calls, "changes"))  # type: ignore[arg-type]
    result = intake.submit(CRM, "k1", BODY)
    assert calls == Counter({"idempotency.claim": 1, "changes.create": 1}), calls
    record = changes.get(result.change.change_id)
    assert record is not None and record.status is ChangeStatus.ACCEPTED and not record.enqueued
    assert [m.change_id for m in publisher.sent] == [record.change_id]
    assert [e.event for e in changes.lineage(record.change_id)] == ["accepted"]
    assert changes.resource_history("local-ehr", "Patient", "p1").items == []


def test_a_replay_of_a_change_still_accepted_publishes_its_message_again(parts) -> None:
    """The first answer may have been lost before the publish: the replay publishes (MessageId de-duplicates)."""
    intake, _, _, publisher = parts
    publisher.fail_next(RetryableError(detail="broker down"))
    first = intake.submit(CRM, "k1", BODY)
    assert publisher.sent == []
    again = intake.submit(CRM, "k1", BODY)
    assert again.replayed and again.change.change_id == first.change.change_id
    assert [m.change_id for m in publisher.sent] == [first.change.change_id]


def test_publish_failure_still_accepts_and_the_sweeper_publishes_later(parts, clock: Clock) -> None:
    intake, _, changes, publisher = parts
    publisher.fail_next(RetryableError(detail="broker down"))
    result = intake.submit(CRM, "k2", BODY)
    record = changes.get(result.change.change_id)
    assert record is not None and not record.enqueued and publisher.sent == []
    assert sweeper(intake).sweep(clock.now).published == 0  # too young yet
    clock.now += timedelta(minutes=2)
    assert sweeper(intake).sweep(clock.now).published == 1
    assert [m.change_id for m in publisher.sent] == [record.change_id]
    swept = changes.get(record.change_id)
    assert swept is not None and swept.enqueued
    assert sweeper(intake).sweep(clock.now).published == 0


def test_a_crash_after_the_claim_is_finished_by_a_retry_with_the_same_key(parts, clock: Clock) -> None:
    intake, idem, changes, publisher = parts
    # The first attempt claimed the key and died before storing the record.
    first = intake.submit(CRM, "warmup", BODY)  # learn the fingerprint the intake computes
    claim = idem.get(CRM.caller_key, "warmup")
    assert claim is not None
    idem.claim(
        IdempotencyRecord(
            caller=CRM.caller_key,
            key="crashed",
            fingerprint=claim.fingerprint,
            change_id="c-crashed",
            created_at=clock.now,
            expires_at=clock.now + timedelta(hours=72),
        )
    )
    with pytest.raises(IdempotencyKeyInUseError):
        intake.submit(CRM, "crashed", BODY)  # still young: maybe the first attempt is just slow
    clock.now += timedelta(minutes=1)
    resumed = intake.submit(CRM, "crashed", BODY)
    assert resumed.change.change_id == "c-crashed"
    assert changes.get("c-crashed") is not None
    assert [m.change_id for m in publisher.sent] == [first.change.change_id, "c-crashed"]
    assert intake.submit(CRM, "crashed", BODY).change.change_id == "c-crashed"
    with pytest.raises(IdempotencyKeyMismatchError):
        intake.submit(CRM, "crashed", BODY.replace(b"555", b"556"))


def test_purge_drops_keys_past_retention(parts, clock: Clock) -> None:
    intake, idem, _, _ = parts
    intake.submit(CRM, "old", BODY)
    assert purge_idempotency_keys(idem, clock.now + timedelta(hours=71)) == 0
    assert purge_idempotency_keys(idem, clock.now + timedelta(hours=73)) == 1
    assert idem.get(CRM.caller_key, "old") is None


def test_a_change_published_but_never_started_becomes_failed_for_operators(parts, clock: Clock) -> None:
    intake, _, changes, _ = parts
    record = intake.submit(CRM, "stuck", BODY).change
    assert sweeper(intake).sweep(clock.now + timedelta(minutes=10)).failed == 0
    assert sweeper(intake).sweep(clock.now + timedelta(minutes=31)).failed == 1
    stuck = changes.get(record.change_id)
    assert stuck is not None and stuck.status is ChangeStatus.FAILED
    assert stuck.error is not None and stuck.error.code == "not-dispatched"
