"""The payload purge: what a caller sent is kept for the retention after its change ended, then removed.

A change keeps what callers sent in a few places: the request body (inline in the record, or a blob claim check),
the planned resource (``plan.proposed``, the same), the values in the plan's diff, and the comments of an approval
or a resolution. ``WRITEBACK_PAYLOAD_RETENTION_DAYS`` after the change ended, the purge removes them in ONE
conditional write (If-Match on the record's ETag) that also marks the record ``payloadPurgedAt`` and appends a
``payload-purged`` lineage event (what was removed; no values), then deletes the blobs. What stays is the lineage
and the record's paths, hashes, versions, decisions, actors and outcomes. A purged change cannot run again: retry and
resolve answer 409 ``payload-purged``. A change that has not ended is never purged, however long it waits.

Finding the candidates without reading the whole changes table: change ids sort by the time they were taken, and a
change cannot end before it started, so every change that ended before the cutoff has an id taken before it. Each
run reads the key range of ids from its cursor up to the cutoff (less a margin, so that a change that ends within
the margin of its start is over when read), purges those that ended before the cutoff, and schedules the others (still
running, or ended since) by name in a due partition keyed by the time they can first be purged. So a change is read
by range once, and again only when it is due. The first run reads the whole table once, in pages over several runs,
for the changes kept before the purge existed (ids that tell no time among them).

Two instances may run at once: the record's ETag lets one purge win (the other finds it purged, or moved, and looks
again); a schedule entry is idempotent; a cursor set too low only makes the next run read more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.app.journal import ChangeJournal, Step, utcnow
from shared.core.change_ids import change_id_floor, change_id_time
from shared.core.errors import ConcurrencyError, PayloadPurgedError
from shared.core.models import ChangeRecord, RetentionCursor
from shared.core.ports import PayloadStore, RetentionState
from shared.core.record_parts import ApprovalState, ChangePlan, PayloadRef, Resolution

PURGED_EVENT = "payload-purged"
# A change that ends within this long of its start is over when the key range first reads its id.
SETTLE_MARGIN = timedelta(hours=1)
# Above every change id (UUIDs are hex digits and dashes): the first pass reads to the end of the table.
END_OF_IDS = "~"
PAGE_SIZE = 500


def purged_error(record: ChangeRecord) -> PayloadPurgedError:
    at = record.payload_purged_at.isoformat() if record.payload_purged_at else "earlier"
    return PayloadPurgedError(
        f"The request body, planned resource, diff values and comments of this change were purged at {at}, "
        "WRITEBACK_PAYLOAD_RETENTION_DAYS after it ended; it cannot run again. Submit a new change instead."
    )


def _ref_without_body(ref: PayloadRef) -> PayloadRef:
    """The reference with its inline body dropped: kind, hash, size and blob name (of a deleted blob) stay."""
    return PayloadRef.from_record({k: v for k, v in ref.to_record().items() if k != "inline"})


def _diff_without_values(diff: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each operation's ``op`` and ``path`` (and ``from``, a path too): no ``value``."""
    return [{k: v for k, v in operation.items() if k in ("op", "path", "from")} for operation in diff]


def strip_values(record: ChangeRecord) -> tuple[dict[str, Any], list[str]]:
    """The record's fields with every value from a caller removed, and the names of what was removed."""
    updates: dict[str, Any] = {"payload": _ref_without_body(record.payload)}
    removed = ["request"]
    if record.plan is not None:
        plan = record.plan.to_record()
        if any("value" in operation for operation in record.plan.diff):
            plan["diff"] = _diff_without_values(record.plan.diff)
            removed.append("diffValues")
        if record.plan.proposed is not None:
            plan["proposed"] = _ref_without_body(record.plan.proposed).to_record()
            removed.append("proposed")
        updates["plan"] = ChangePlan.from_record(plan)
    if record.approval is not None and record.approval.comment is not None:
        approval = {k: v for k, v in record.approval.to_record().items() if k != "comment"}
        updates["approval"] = ApprovalState.from_record(approval)
        removed.append("approvalComment")
    if record.resolution is not None and record.resolution.comment is not None:
        resolution = {k: v for k, v in record.resolution.to_record().items() if k != "comment"}
        updates["resolution"] = Resolution.from_record(resolution)
        removed.append("resolutionComment")
    return updates, removed


def stored_blobs(record: ChangeRecord) -> list[PayloadRef]:
    """The blob claim checks the record names (a purged record still names the blobs it had)."""
    refs = [record.payload, record.plan.proposed if record.plan else None]
    return [ref for ref in refs if ref is not None and ref.kind == "blob"]


@dataclass
class RetentionResult:
    purged: int = 0
    scheduled: int = 0
    read: int = 0
    due: int = 0
    lost_races: int = 0


class PayloadPurger:
    def __init__(
        self,
        journal: ChangeJournal,
        payloads: PayloadStore,
        state: RetentionState,
        *,
        retention: timedelta,
        margin: timedelta = SETTLE_MARGIN,
        limit: int = 2000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.journal = journal
        self.payloads = payloads
        self.state = state
        self.retention = retention
        self.margin = margin
        self.limit = limit
        self._clock = clock

    def purge(self, now: datetime | None = None) -> RetentionResult:
        """One run: the scheduled changes that are due, then the next key range of change ids."""
        now = now or self._clock()
        result = RetentionResult()
        for entry in self.state.due(now, self.limit):
            result.due += 1
            record = self.journal.store.get(entry.change_id)
            rescheduled = self._settle(record, now, result) if record is not None else None
            if rescheduled is None or rescheduled != entry.due:
                self.state.done(entry)
        self._read_range(now, result)
        return result

    def _read_range(self, now: datetime, result: RetentionResult) -> None:
        cutoff = now - self.retention - self.margin
        cursor = self.state.cursor() or RetentionCursor(next_id="", full_pass_below=cutoff)
        full_pass = cursor.full_pass_below
        high = END_OF_IDS if full_pass is not None else change_id_floor(cutoff)
        if cursor.next_id >= high:
            return
        for record in self._records(cursor.next_id, high):
            if result.read >= self.limit:
                self.state.advance(cursor.model_copy(update={"next_id": record.change_id}))
                return
            result.read += 1
            taken_at = change_id_time(record.change_id)
            if full_pass is not None and taken_at is not None and taken_at >= full_pass:
                continue  # the key-range reads take it when it is old enough
            self._settle(record, now, result)
        if full_pass is not None:
            self.state.advance(RetentionCursor(next_id=change_id_floor(full_pass)))
        else:
            self.state.advance(RetentionCursor(next_id=high))

    def _records(self, low: str, high: str) -> Iterator[ChangeRecord]:
        token = None
        while True:
            page = self.journal.store.query(change_ids=(low, high), page_size=PAGE_SIZE, continuation_token=token)
            yield from page.items
            token = page.continuation_token
            if token is None:
                return

    def _settle(
        self, record: ChangeRecord, now: datetime, result: RetentionResult, *, again: bool = True
    ) -> datetime | None:
        """Purge the change if it ended at least the retention ago; else schedule it. The time it is due again, or
        None when it needs no more looking at."""
        if record.payload_purged_at is not None:
            for ref in stored_blobs(record):
                self.payloads.delete(ref)  # a run that stopped between the record and its blobs
            return None
        due = record.updated_at + self.retention if record.status.is_terminal else now + self.retention
        if due > now:
            self.state.schedule(record.change_id, due)
            result.scheduled += 1
            return due
        updates, removed = strip_values(record)
        step = Step(
            PURGED_EVENT,
            {"retentionDays": self.retention.days, "endedAt": record.updated_at.isoformat(), "removed": removed},
        )
        try:
            # The change did not move: updatedAt stays when it ended; payloadPurgedAt says when this happened.
            self.journal.record(record, [step], updated_at=record.updated_at, payload_purged_at=now, **updates)
        except ConcurrencyError:
            # Another instance purged it, or someone moved it (a retry) since it was read: read it again.
            result.lost_races += 1
            fresh = self.journal.store.get(record.change_id) if again else None
            if fresh is not None:
                return self._settle(fresh, now, result, again=False)
            if again:
                return None  # gone
            self.state.schedule(record.change_id, now + self.margin)  # it keeps moving: look again soon
            return now + self.margin
        result.purged += 1
        for ref in stored_blobs(record):
            self.payloads.delete(ref)
        return None


def refuse_if_purged(record: ChangeRecord) -> None:
    """A purged change cannot run again, nor be resolved: what it would need is gone."""
    if record.payload_purged_at is not None:
        raise purged_error(record)
