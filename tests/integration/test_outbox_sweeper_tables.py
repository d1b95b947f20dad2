"""The outbox sweeper over the real Table adapters on Azurite: the key-range read, the cursor row and the pending
partition together, for an unpublished change, a dead-lettered one and an operator's retry of an old change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.app.journal import Step
from shared.bootstrap import build
from shared.config import Settings
from shared.core.change_ids import change_id_time
from shared.core.errors import RetryableError
from shared.core.models import ChangeStatus
from shared.core.targets import TargetRegistry
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakePayloadStore
from tests.unit.test_intake import BODY, CRM, REPO

pytestmark = pytest.mark.integration


def test_the_sweeper_on_table_storage(azurite) -> None:  # type: ignore[no-untyped-def]
    now = [datetime(2026, 11, 25, 12, tzinfo=UTC)]

    def clock() -> datetime:
        return now[0]

    publisher = FakeMessagePublisher(clock=clock)
    settings = Settings(
        storage_connection_string=azurite.connection_string,
        table_prefix="t" + uuid.uuid4().hex[:10],
        max_body_bytes=10_000,
        sweep_after_seconds=60,
        stuck_after_minutes=30,
        sweep_grace_minutes=15,
    )
    gateway = build(
        settings,
        clock=clock,
        publisher=publisher,
        payload_store=FakePayloadStore(),
        targets=TargetRegistry.from_file(REPO / "config" / "targets.yaml", {}),
    )
    intake, journal, sweeper, state = gateway.intake, gateway.journal, gateway.sweeper, gateway.sweep_state

    def sweep(after: timedelta):  # type: ignore[no-untyped-def]
        now[0] += after
        return sweeper.sweep(now[0])

    publisher.fail_next(RetryableError(detail="broker down"))
    unpublished = intake.submit(CRM, "k1", BODY).change
    now[0] += timedelta(seconds=1)
    dead_lettered = intake.submit(CRM, "k2", BODY.replace(b"555", b"556")).change
    assert sweep(timedelta(seconds=10)).published == 0
    result = sweep(timedelta(minutes=2))
    # Both are still accepted and neither is marked enqueued (the intake leaves the mark to the pipeline): both are
    # published again (MessageId de-duplicates the second message) and marked.
    assert result.published == 2 and result.cursor == change_id_time(unpublished.change_id)
    assert state.cursor() == result.cursor
    journal.record(journal.load(unpublished.change_id), [Step("validating")], status=ChangeStatus.VALIDATING)

    result = sweep(timedelta(minutes=30))
    assert result.failed == 1 and journal.load(dead_lettered.change_id).status is ChangeStatus.FAILED
    assert result.cursor == now[0] - timedelta(seconds=60)

    sweep(timedelta(days=2))
    publisher.fail_next(RetryableError(detail="broker down"))
    gateway.operations.retry(dead_lettered.change_id, "operator-1")
    assert [e.change_id for e in state.pending()] == [dead_lettered.change_id]
    assert sweep(timedelta(minutes=2)).published == 1
    assert publisher.sent[-1].change_id == dead_lettered.change_id and publisher.sent[-1].kind == "retry"
    journal.record(journal.load(dead_lettered.change_id), [Step("validating")], status=ChangeStatus.VALIDATING)
    sweep(timedelta(minutes=20))
    assert state.pending() == []
