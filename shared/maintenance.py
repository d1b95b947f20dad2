"""Housekeeping: expired idempotency keys, and the outbox sweeper."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.errors import ConcurrencyError, WritebackError
from shared.intake import IntakeService
from shared.journal import ChangeJournal, Step, utcnow
from shared.models import ChangeMessage, ChangeStatus
from shared.ports import IdempotencyStore


def purge_idempotency_keys(store: IdempotencyStore, now: datetime | None = None) -> int:
    return store.purge_expired(now or utcnow())


def sweep_unpublished(
    intake: IntakeService, *, older_than_seconds: int, max_changes: int = 500, now: datetime | None = None
) -> int:
    """Publish (again) changes still accepted and not enqueued after a while; MessageId dedupe makes it safe."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
    published, token = 0, None
    while published < max_changes:
        page = intake.journal.store.query(status=ChangeStatus.ACCEPTED, page_size=100, continuation_token=token)
        for record in page.items:
            if record.enqueued or record.updated_at > cutoff:
                continue
            try:
                intake.publisher.publish(ChangeMessage(change_id=record.change_id, target=record.target))
            except WritebackError:
                return published
            intake.mark_enqueued(record)
            published += 1
        token = page.continuation_token
        if token is None:
            break
    return published


STUCK_ERROR = {
    "type": "urn:writeback:problem:not-dispatched",
    "title": "The change was never picked up",
    "status": 503,
    "detail": "The change stayed accepted: its message was probably dead-lettered. Retry it.",
}


def fail_stuck(
    journal: ChangeJournal, *, older_than_seconds: int, now: datetime | None = None, limit: int = 500
) -> int:
    """Changes published but never started (their message dead-lettered) become ``failed``, so operators see them
    in the exception queue and can retry them (a retry publishes a new message)."""
    cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
    failed, token = 0, None
    while failed < limit:
        page = journal.store.query(status=ChangeStatus.ACCEPTED, page_size=100, continuation_token=token)
        for record in page.items:
            if not record.enqueued or record.updated_at > cutoff:
                continue
            try:
                journal.record(
                    record,
                    [Step("failed", {"code": "not-dispatched"})],
                    status=ChangeStatus.FAILED,
                    error=STUCK_ERROR,
                )
            except ConcurrencyError:
                continue  # it moved meanwhile: it was picked up after all
            failed += 1
        token = page.continuation_token
        if token is None:
            break
    return failed
