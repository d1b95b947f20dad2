"""Housekeeping: expired idempotency keys, and the outbox sweeper."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from shared.app.intake import IntakeService
from shared.app.journal import Step, utcnow
from shared.core.change_ids import change_id_floor, change_id_time
from shared.core.errors import ConcurrencyError, WritebackError
from shared.core.models import ChangeMessage, ChangeRecord, ChangeStatus
from shared.core.ports import ApprovalNonceStore, IdempotencyStore, SweepState
from shared.core.record_parts import StoredProblem


def purge_idempotency_keys(store: IdempotencyStore, now: datetime | None = None) -> int:
    return store.purge_expired(now or utcnow())


@dataclass(frozen=True)
class PurgeResult:
    keys: int
    nonces: int


def purge_expired(
    keys: IdempotencyStore, nonces: ApprovalNonceStore | None, now: datetime | None = None
) -> PurgeResult:
    """Delete idempotency keys past their retention and the nonces of approval links past their expiry."""
    now = now or utcnow()
    return PurgeResult(keys.purge_expired(now), nonces.purge_expired(now) if nonces is not None else 0)


@dataclass(eq=False)
class NotDispatchedError(WritebackError):
    """A change that stayed ``accepted``: its message never started an orchestration."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "not-dispatched"
    title: ClassVar[str] = "The change was never picked up"
    detail: str = "The change stayed accepted: its message was probably dead-lettered. Retry it."


@dataclass(eq=False)
class OrchestrationLostError(WritebackError):
    """A change left ``writing``: its orchestration stopped (or was lost) before the write ended."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "orchestration-lost"
    title: ClassVar[str] = "The change stopped while writing"
    detail: str = (
        "The change stayed writing with nothing running it. Retry it: the write is version-checked and tagged with "
        "the change, so the target keeps one version."
    )


OPEN_STATUSES = (ChangeStatus.ACCEPTED, ChangeStatus.WRITING)


@dataclass
class SweepResult:
    published: int = 0
    failed: int = 0
    read: int = 0
    cursor: datetime | None = None


class OutboxSweeper:
    """Finds changes left ``accepted``: publishes those never enqueued (MessageId de-duplication makes a second
    message harmless), and fails those enqueued but never started (their message was dead-lettered), so that
    operators see them in the exception queue and can retry them. Likewise it fails changes left ``writing`` with
    no sign of life for ``stuck_after`` (a write waiting to retry records each wait), whose orchestration stopped.

    Change ids sort by the time they were taken, so the sweeper reads only a key range: from its cursor, less a
    grace period for an intake that stores its record late, up to ``publish_after`` ago. It then moves the cursor
    to the oldest change it leaves accepted or writing. Changes put back to ``accepted`` or moved to ``writing``
    under an older id (an operator's retry, an approval, an intake resumed late) are marked pending and checked by
    name until they move on.
    """

    def __init__(
        self,
        intake: IntakeService,
        state: SweepState,
        *,
        publish_after: timedelta,
        stuck_after: timedelta,
        grace: timedelta,
        limit: int = 500,
    ) -> None:
        self.intake = intake
        self.state = state
        self.publish_after = publish_after
        self.stuck_after = stuck_after
        self.grace = grace
        self.limit = limit

    def sweep(self, now: datetime | None = None) -> SweepResult:
        now = now or utcnow()
        result = SweepResult()
        if self._sweep_pending(now, result):
            result.cursor = self._sweep_range(now, result)
            self.state.advance(result.cursor)
        return result

    def _sweep_pending(self, now: datetime, result: SweepResult) -> bool:
        """Check the marked changes; False when the publisher is down (the sweep stops)."""
        store = self.intake.journal.store
        for entry in self.state.pending(self.limit):
            record = store.get(entry.change_id)
            if record is None or record.status not in OPEN_STATUSES:
                # Young marks stay: a retry marks its change before putting it back to accepted.
                if now - entry.marked_at > self.grace:
                    self.state.clear_pending(entry)
                continue
            if self._limit_reached(result):
                return True
            still_open = self._settle(record, now, result)
            if still_open is None:
                return False
            if not still_open:
                self.state.clear_pending(entry)
        return True

    def _sweep_range(self, now: datetime, result: SweepResult) -> datetime:
        """Act on the accepted and writing changes in the cursor's key range; return where the next sweep starts."""
        end = now - self.publish_after
        start = self.state.cursor() or now - self.stuck_after
        oldest_open = end
        for status in OPEN_STATUSES:
            for record in self._in(status, change_id_floor(start - self.grace), change_id_floor(end)):
                result.read += 1
                still_open = None if self._limit_reached(result) else self._settle(record, now, result)
                taken_at = change_id_time(record.change_id)
                if still_open is not False and taken_at is not None:
                    oldest_open = min(oldest_open, taken_at)
                if still_open is None:
                    break
        return oldest_open

    def _in(self, status: ChangeStatus, low: str, high: str) -> Iterator[ChangeRecord]:
        token = None
        while True:
            page = self.intake.journal.store.query(
                status=status, change_ids=(low, high), page_size=100, continuation_token=token
            )
            yield from page.items
            token = page.continuation_token
            if token is None:
                return

    def _limit_reached(self, result: SweepResult) -> bool:
        return result.published + result.failed >= self.limit

    def _settle(self, record: ChangeRecord, now: datetime, result: SweepResult) -> bool | None:
        """Publish or fail one accepted change, or fail a writing one that stopped. True: it stays as it is;
        False: it is failed now; None: the publisher is down."""
        if record.status is ChangeStatus.WRITING:
            return self._fail_if_stuck(record, now, result, OrchestrationLostError())
        if not record.enqueued:
            if record.updated_at > now - self.publish_after:
                return True
            message = ChangeMessage(
                change_id=record.change_id,
                target=record.target,
                kind="retry" if record.retries else "change",
                attempt=record.retries,
            )
            try:
                self.intake.publisher.publish(message)
            except WritebackError:
                return None
            self.intake.mark_enqueued(record)
            result.published += 1
            return True
        return self._fail_if_stuck(record, now, result, NotDispatchedError())

    def _fail_if_stuck(self, record: ChangeRecord, now: datetime, result: SweepResult, error: WritebackError) -> bool:
        if record.updated_at > now - self.stuck_after:
            return True
        try:
            self.intake.journal.record(
                record,
                [Step("failed", {"code": error.code})],
                status=ChangeStatus.FAILED,
                error=StoredProblem.of(error),
            )
        except ConcurrencyError:
            return True  # it moved meanwhile: it was picked up after all
        result.failed += 1
        return False
