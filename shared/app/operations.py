"""Operators' and approvers' tools for changes that did not complete: retry, re-plan, discard, bulk replay.

A retry keeps the change id: the change goes back to ``accepted`` (lineage ``retry-requested``) and a new message is
published (MessageId ``<changeId>:retry:<n>``), so the dispatcher starts its orchestration again. Only a change that
ended ``failed``, ``conflict`` or ``expired`` can be retried, so replaying twice writes once: the second replay finds
the change accepted or completed and leaves it alone; a write repeated after success recognises its own tag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from shared.app.journal import ChangeJournal, Step, utcnow
from shared.app.retention import refuse_if_purged
from shared.core.errors import ConcurrencyError, StateConflictError, WritebackError
from shared.core.models import ChangeMessage, ChangeRecord, ChangeStatus
from shared.core.ports import MessagePublisher, SweepState
from shared.core.record_parts import Resolution


def _comment_hash(comment: str | None) -> dict[str, str]:
    return {"commentHash": hashlib.sha256(comment.encode("utf-8")).hexdigest()} if comment else {}


RETRYABLE = frozenset({ChangeStatus.FAILED, ChangeStatus.CONFLICT, ChangeStatus.EXPIRED})
MAX_REPLAY = 1000


@dataclass(frozen=True)
class ReplayFilter:
    status: ChangeStatus
    target: str | None = None
    error_code: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: ChangeRecord) -> bool:
        if self.error_code and not (record.error and record.error.code.endswith(self.error_code)):
            return False
        if self.since and record.updated_at < self.since:
            return False
        return not (self.until and record.updated_at > self.until)


class OperationsService:
    def __init__(
        self,
        journal: ChangeJournal,
        publisher: MessagePublisher,
        sweep_state: SweepState,
        *,
        stuck_after: timedelta = timedelta(minutes=30),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.journal = journal
        self.publisher = publisher
        self.sweep_state = sweep_state
        self.stuck_after = stuck_after
        self._clock = clock

    def _stopped_writing(self, record: ChangeRecord) -> bool:
        """A change left ``writing`` with no sign of life for ``stuck_after``: its orchestration stopped."""
        return record.status is ChangeStatus.WRITING and record.updated_at <= self._clock() - self.stuck_after

    def retry(self, change_id: str, actor: str, *, replan: bool = False, comment: str | None = None) -> ChangeRecord:
        """Run a failed / conflicting / expired change again, or one whose orchestration stopped while it was
        writing; with ``replan``, on the target's current version."""
        record = self.journal.load(change_id, fresh=True)
        refuse_if_purged(record)
        if record.status not in RETRYABLE and not self._stopped_writing(record):
            raise StateConflictError(
                f"The change is {record.status.value}; only failed, conflict or expired changes, or changes "
                f"writing with no progress for {int(self.stuck_after.total_seconds() // 60)} minutes, can be retried"
            )
        if replan and record.status is not ChangeStatus.CONFLICT:
            raise StateConflictError("Only a change in conflict can be re-planned")
        attempt = record.retries + 1
        details = {"by": actor, "attempt": attempt, "replan": replan, "from": record.status.value}
        step = Step("retry-requested", {**details, **_comment_hash(comment)})
        # Its id is older than the outbox sweeper's key range: named before it is accepted again, so that the
        # sweeper still publishes it if the publish below fails or the process dies first.
        self.sweep_state.mark_pending(change_id, self._clock())
        record = self.journal.record(
            record,
            [step],
            status=ChangeStatus.ACCEPTED,
            retries=attempt,
            replan=replan or record.replan,
            enqueued=False,
            error=None,
            result=None,
            approval=None,
            **self._resolution("replan", actor, comment),
        )
        try:
            self.publisher.publish(
                ChangeMessage(change_id=change_id, target=record.target, kind="retry", attempt=attempt)
            )
        except WritebackError:
            return record  # accepted again all the same; the sweeper publishes it
        try:
            return self.journal.record(record, [Step("enqueued", {"attempt": attempt})], enqueued=True)
        except ConcurrencyError:
            return self.journal.load(change_id, fresh=True)

    def discard(self, change_id: str, actor: str, *, comment: str | None = None) -> ChangeRecord:
        record = self.journal.load(change_id, fresh=True)
        refuse_if_purged(record)
        if record.status is not ChangeStatus.CONFLICT:
            raise StateConflictError(f"The change is {record.status.value}; only a change in conflict can be discarded")
        return self.journal.record(
            record,
            [Step("discarded", {"by": actor, **_comment_hash(comment)}, actor=actor)],
            status=ChangeStatus.CANCELLED,
            **self._resolution("discard", actor, comment),
        )

    def _resolution(self, action: Literal["replan", "discard"], actor: str, comment: str | None) -> dict[str, Any]:
        """How a person resolved a conflict, with their comment (kept on the record; lineage keeps its hash)."""
        if comment is None:
            return {}
        return {"resolution": Resolution(action=action, by=actor, at=self._clock(), comment=comment)}

    def matching(self, where: ReplayFilter, limit: int = MAX_REPLAY) -> list[ChangeRecord]:
        found: list[ChangeRecord] = []
        token = None
        while len(found) < limit:
            page = self.journal.store.query(
                status=where.status, target=where.target, page_size=200, continuation_token=token
            )
            found += [r for r in page.items if where.matches(r)]
            token = page.continuation_token
            if token is None:
                break
        return found[:limit]

    def replay(
        self, where: ReplayFilter, actor: str, *, dry_run: bool, limit: int = MAX_REPLAY
    ) -> dict[str, list[str]]:
        if where.status not in RETRYABLE:
            raise StateConflictError("Only failed, conflict or expired changes can be replayed")
        matched = self.matching(where, limit)
        retried: list[str] = []
        skipped: list[str] = []
        if not dry_run:
            for record in matched:
                try:
                    self.retry(record.change_id, actor)
                    retried.append(record.change_id)
                except (StateConflictError, ConcurrencyError):
                    skipped.append(record.change_id)
        return {"matched": [r.change_id for r in matched], "retried": retried, "skipped": skipped}
