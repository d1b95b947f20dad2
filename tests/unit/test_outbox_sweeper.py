"""The outbox sweeper reads a key range of time-ordered change ids, not the whole changes table, and still finds every
change left accepted: unpublished ones, dead-lettered ones, an operator's retry, an intake resumed hours later; and
every change left writing by an orchestration that stopped, approved long after its id was taken or not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from shared.app.approvals import ApprovalService, Approver
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal, Step
from shared.app.maintenance import OutboxSweeper
from shared.app.operations import OperationsService
from shared.core.change_ids import change_id_floor, change_id_time, new_change_id
from shared.core.errors import RetryableError, StateConflictError
from shared.core.models import ChangeRecord, ChangeStatus, IdempotencyRecord, Principal
from shared.core.targets import TargetRegistry
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState

REPO = Path(__file__).resolve().parents[2]
CRM = Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"])
START = datetime(2026, 11, 25, 12, tzinfo=UTC)
BROKER_DOWN = RetryableError(detail="broker down")


def body(value: str = "555") -> bytes:
    patch = [{"op": "replace", "path": "/telecom/0/value", "value": value}]
    return json.dumps(
        {"target": "local-ehr", "operation": "patch", "resourceRef": "Patient/p1", "patch": patch}
    ).encode()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class Gateway:
    def __init__(self, *, limit: int = 500) -> None:
        self.clock = Clock()
        self.idempotency, self.changes = FakeIdempotencyStore(), FakeChangeStore()
        self.publisher, self.state = FakeMessagePublisher(clock=self.clock), FakeSweepState()
        self.journal = ChangeJournal(self.changes, clock=self.clock)
        self.intake = IntakeService(
            idempotency=self.idempotency,
            journal=self.journal,
            payloads=FakePayloadStore(),
            publisher=self.publisher,
            targets=TargetRegistry.from_file(REPO / "config" / "targets.yaml", {}),
            max_body_bytes=10_000,
            retention=timedelta(hours=72),
            sweep_state=self.state,
            sweep_grace=timedelta(minutes=15),
            clock=self.clock,
        )
        self.operations = OperationsService(self.journal, self.publisher, self.state, clock=self.clock)
        self.sweeper = OutboxSweeper(
            self.intake,
            self.state,
            publish_after=timedelta(seconds=60),
            stuck_after=timedelta(minutes=30),
            grace=timedelta(minutes=15),
            limit=limit,
        )

    def sweep(self, after: timedelta = timedelta(0)):  # type: ignore[no-untyped-def]
        self.clock.now += after
        return self.sweeper.sweep(self.clock.now)

    def submit(self, key: str) -> ChangeRecord:
        return self.intake.submit(CRM, key, body()).change

    def record(self, change_id: str) -> ChangeRecord:
        found = self.changes.get(change_id)
        assert found is not None
        return found

    def start(self, change_id: str) -> None:
        """What the orchestration's first step does: the change leaves ``accepted``."""
        self.journal.record(self.record(change_id), [Step("validating")], status=ChangeStatus.VALIDATING)

    def published(self) -> list[str]:
        return [m.change_id for m in self.publisher.sent]


@pytest.fixture
def gw() -> Gateway:
    return Gateway()


def test_change_ids_sort_by_the_time_they_were_taken() -> None:
    times = [START + timedelta(milliseconds=ms) for ms in (0, 1, 2, 999, 1000, 3_600_000)]
    ids = [new_change_id(t) for t in times for _ in range(3)]
    groups = [ids[i : i + 3] for i in range(0, len(ids), 3)]
    assert all(max(a) < min(b) for a, b in pairwise(groups))  # random within a millisecond
    assert [change_id_time(i) for i in ids[::3]] == times
    for t, taken in zip(times, ids[::3], strict=True):
        assert change_id_floor(t) <= taken < change_id_floor(t + timedelta(milliseconds=1))
    assert len(set(ids)) == len(ids)
    assert change_id_time("c-crashed") is None
    assert change_id_time("3f2b8c1e-9a4d-4f6b-8e2a-1c3d5e7f9a0b") is None  # a version-4 id


def test_unpublished_change_is_published_once_it_is_old_enough(gw: Gateway) -> None:
    gw.publisher.fail_next(BROKER_DOWN)
    change = gw.submit("k1")
    assert not gw.record(change.change_id).enqueued
    assert gw.sweep().published == 0
    assert gw.sweep(timedelta(minutes=2)).published == 1
    assert gw.published() == [change.change_id] and gw.record(change.change_id).enqueued


def test_the_cursor_follows_the_oldest_change_still_accepted(gw: Gateway) -> None:
    first = gw.submit("k1")  # published, never started: its message was dead-lettered
    gw.clock.now += timedelta(minutes=5)
    second = gw.submit("k2")
    gw.start(second.change_id)
    result = gw.sweep(timedelta(minutes=5))
    assert result.cursor == change_id_time(first.change_id)
    gw.start(first.change_id)
    result = gw.sweep(timedelta(minutes=1))
    assert result.cursor == gw.clock.now - timedelta(seconds=60)


def test_a_dead_lettered_change_is_failed_after_stuck_after(gw: Gateway) -> None:
    change = gw.submit("k1")
    # The intake does not mark a change enqueued (one round trip less before the 202): the first sweep past
    # publish_after publishes it again (de-duplicated by MessageId) and marks it; stuck_after counts from there.
    swept = gw.sweep(timedelta(minutes=10))
    assert (swept.published, swept.failed) == (1, 0) and gw.record(change.change_id).enqueued
    assert gw.sweep(timedelta(minutes=21)).failed == 0
    assert gw.sweep(timedelta(minutes=10)).failed == 1
    failed = gw.record(change.change_id)
    assert failed.status is ChangeStatus.FAILED and failed.error is not None
    assert failed.error is not None and failed.error.code == "not-dispatched"


def test_the_sweep_reads_its_key_range_not_the_table(gw: Gateway) -> None:
    """A record stored with an id from hours before the cursor (which the intake never does) is not read."""
    gw.submit("k1")
    gw.start(gw.submit("k2").change_id)
    gw.sweep(timedelta(hours=3))
    old_id = new_change_id(START + timedelta(minutes=30))
    stray = gw.record(gw.submit("k3").change_id).model_copy(update={"change_id": old_id, "enqueued": False})
    gw.changes._records[old_id] = stray
    result = gw.sweep(timedelta(minutes=2))
    assert old_id not in gw.published()
    assert result.read == 1  # only k3: nothing before the cursor less the grace is read


def test_a_change_taken_in_hours_after_its_claim_is_still_published(gw: Gateway) -> None:
    """The first attempt claimed the key and died; the client retries hours later, and then the broker is down."""
    probe = gw.submit("probe")
    claim = gw.idempotency.get(CRM.caller_key, "probe")
    assert claim is not None
    late_id = new_change_id(gw.clock.now)
    gw.idempotency.claim(
        IdempotencyRecord(
            caller=CRM.caller_key,
            key="late",
            fingerprint=claim.fingerprint,
            change_id=late_id,
            created_at=gw.clock.now,
            expires_at=gw.clock.now + timedelta(hours=72),
        )
    )
    gw.start(probe.change_id)
    gw.sweep(timedelta(hours=2))
    assert gw.sweep(timedelta(hours=2)).cursor == gw.clock.now - timedelta(seconds=60)
    gw.publisher.fail_next(BROKER_DOWN)
    resumed = gw.intake.submit(CRM, "late", body())
    assert resumed.change.change_id == late_id and not gw.record(late_id).enqueued
    assert gw.sweep(timedelta(minutes=2)).published == 1
    assert late_id in gw.published() and gw.record(late_id).enqueued
    gw.start(late_id)
    gw.sweep(timedelta(minutes=20))
    assert gw.state.pending() == []


def test_an_operators_retry_of_an_old_change_is_published_when_the_first_publish_fails(gw: Gateway) -> None:
    change = gw.submit("k1")
    gw.sweep(timedelta(minutes=2))  # never started: published again
    gw.sweep(timedelta(minutes=31))  # dead-lettered: failed
    assert gw.record(change.change_id).status is ChangeStatus.FAILED
    gw.sweep(timedelta(days=3))
    gw.publisher.fail_next(BROKER_DOWN)
    retried = gw.operations.retry(change.change_id, "operator-1")
    assert retried.status is ChangeStatus.ACCEPTED and not retried.enqueued
    assert gw.sweep(timedelta(minutes=2)).published == 1
    assert gw.publisher.sent[-1].kind == "retry" and gw.publisher.sent[-1].attempt == 1
    # A retry that is never picked up is failed again, and its mark cleared.
    assert gw.sweep(timedelta(minutes=31)).failed == 1
    assert gw.state.pending() == []


def test_a_young_mark_stays_while_its_retry_is_being_recorded(gw: Gateway) -> None:
    change = gw.submit("k1")
    gw.start(change.change_id)
    gw.state.mark_pending(change.change_id, gw.clock.now)  # a retry marked it and has not moved it yet
    gw.sweep(timedelta(minutes=5))
    assert [e.change_id for e in gw.state.pending()] == [change.change_id]
    gw.sweep(timedelta(minutes=15))
    assert gw.state.pending() == []


def test_a_down_broker_stops_the_sweep_without_moving_the_cursor_past_what_it_left(gw: Gateway) -> None:
    gw.publisher.fail_next(BROKER_DOWN, count=3)
    first = gw.submit("k1")
    gw.clock.now += timedelta(seconds=1)
    second = gw.submit("k2")
    gw.clock.now += timedelta(minutes=2)
    result = gw.sweep()  # the broker is still down
    assert result.published == 0 and result.cursor == change_id_time(first.change_id)
    result = gw.sweep(timedelta(minutes=1))
    assert result.published == 2 and gw.published() == [first.change_id, second.change_id]


def test_a_limit_leaves_the_rest_for_the_next_sweep() -> None:
    gw = Gateway(limit=2)
    gw.publisher.fail_next(BROKER_DOWN, count=5)
    ids = []
    for i in range(5):
        ids.append(gw.submit(f"k{i}").change_id)
        gw.clock.now += timedelta(seconds=1)
    first = gw.sweep(timedelta(minutes=2))
    assert first.published == 2 and first.cursor == change_id_time(ids[0])
    assert gw.sweep().published == 2
    assert gw.sweep().published == 1
    assert sorted(gw.published()) == sorted(ids)


def writing(gw: Gateway, change_id: str) -> None:
    """What prepare does for an allowed change: it moves to ``writing``; then its orchestration stops."""
    gw.journal.record(gw.record(change_id), [Step("writing")], status=ChangeStatus.WRITING)


def test_a_change_whose_orchestration_stopped_while_writing_is_failed_for_operators(gw: Gateway) -> None:
    change = gw.submit("k1")
    writing(gw, change.change_id)
    assert gw.sweep(timedelta(minutes=10)).failed == 0
    assert gw.sweep(timedelta(minutes=10)).cursor == change_id_time(change.change_id), "held while it writes"
    assert gw.sweep(timedelta(minutes=11)).failed == 1
    lost = gw.record(change.change_id)
    assert lost.status is ChangeStatus.FAILED and lost.error is not None and lost.error.code == "orchestration-lost"
    assert gw.sweep(timedelta(minutes=1)).cursor == gw.clock.now - timedelta(seconds=60)


def test_a_change_approved_days_after_its_id_was_taken_is_watched_while_writing(gw: Gateway) -> None:
    change = gw.submit("k1")
    gw.journal.record(gw.record(change.change_id), [Step("asked")], status=ChangeStatus.AWAITING_APPROVAL)
    gw.sweep(timedelta(days=2))  # the cursor moves on: the change is not accepted
    approvals = ApprovalService(gw.journal, sweep_state=gw.state, clock=gw.clock)
    approvals.decide(change.change_id, "approve", Approver("boss", None, "api"), None)
    assert gw.sweep(timedelta(minutes=5)).failed == 0
    assert [e.change_id for e in gw.state.pending()] == [change.change_id]
    assert gw.sweep(timedelta(minutes=31)).failed == 1
    assert gw.record(change.change_id).status is ChangeStatus.FAILED
    gw.sweep(timedelta(minutes=20))
    assert gw.state.pending() == []


def test_the_retry_api_takes_a_change_that_stopped_writing_but_not_one_still_writing(gw: Gateway) -> None:
    change = gw.submit("k1")
    writing(gw, change.change_id)
    gw.clock.now += timedelta(minutes=29)
    with pytest.raises(StateConflictError, match="writing with no progress for 30 minutes"):
        gw.operations.retry(change.change_id, "operator-1")
    gw.clock.now += timedelta(minutes=1)
    retried = gw.operations.retry(change.change_id, "operator-1")
    assert retried.status is ChangeStatus.ACCEPTED and gw.publisher.sent[-1].kind == "retry"
