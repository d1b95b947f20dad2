"""The change journal: a change's record and its append-only lineage, one Table transaction per transition.

It keeps the last record it wrote or read per change in a small per-process cache (with its ETag, for 30 s), so
the steps of one change running in one process do not read the record again before each write. The cache is never
the truth: in Azure another instance may have moved the change since. A cached record is trusted only to go ahead
with a write, which carries its ETag and fails with ``ConcurrencyError`` if the record moved (the step reloads); a
decision to do nothing (a step past its state, a duplicate message) is made on the stored record, read fresh
(``load(..., expect=...)``).
Lineage details must never hold PHI: element paths, hashes, versions, actors and outcomes only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.app.settle_signals import SettleSignals
from shared.core.errors import ConcurrencyError, NotFoundError
from shared.core.models import ChangeRecord, ChangeStatus, LineageEvent
from shared.core.ports import ChangeStore
from shared.core.telemetry import approvals_pending, changes_ended

GATEWAY_ACTOR = "gateway"
CACHE_SIZE = 4096
# Long enough for the steps of one change that follow each other in one process; short enough that a record cached
# in an earlier round of the change (before a retry made elsewhere) is not used.
CACHE_TTL_SECONDS = 30.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Step:
    """One lineage event to record: what happened, in which state, by whom, with which (PHI-free) details."""

    event: str
    details: Mapping[str, Any] = field(default_factory=dict)
    status: ChangeStatus | None = None
    actor: str = GATEWAY_ACTOR


class ChangeJournal:
    def __init__(
        self,
        store: ChangeStore,
        *,
        clock: Callable[[], datetime] = utcnow,
        cache_ttl: float = CACHE_TTL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        signals: SettleSignals | None = None,
    ) -> None:
        self.store = store
        self.signals = signals or SettleSignals()
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._monotonic = monotonic
        self._cache: OrderedDict[str, tuple[ChangeRecord, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _remember(self, record: ChangeRecord) -> ChangeRecord:
        with self._lock:
            self._cache[record.change_id] = (record, self._monotonic())
            self._cache.move_to_end(record.change_id)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return record.model_copy()

    def forget(self, change_id: str) -> None:
        with self._lock:
            self._cache.pop(change_id, None)

    def load(
        self, change_id: str, *, fresh: bool = False, expect: Container[ChangeStatus] | None = None
    ) -> ChangeRecord:
        """The record (from the cache unless ``fresh``); NotFoundError when there is none.

        With ``expect``, a cached record is used only when its status is one of those: any other status is read
        again from the store, since the caller would act on it by doing nothing.
        """
        if not fresh:
            with self._lock:
                entry = self._cache.get(change_id)
            if entry is not None and self._monotonic() - entry[1] < self._cache_ttl:
                cached = entry[0]
                if expect is None or cached.status in expect:
                    return cached.model_copy()
        record = self.store.get(change_id)
        if record is None:
            self.forget(change_id)
            raise NotFoundError(f"change {change_id} not found")
        return self._remember(record)

    def open(self, record: ChangeRecord, step: Step) -> ChangeRecord:
        """Store a new record and its first lineage event together."""
        first = self._event(record, 1, step, record.status)
        created = self.store.create(record.model_copy(update={"sequence": 1}), first)
        return self._remember(created)

    def record(
        self, record: ChangeRecord, steps: Sequence[Step], *, status: ChangeStatus | None = None, **updates: Any
    ) -> ChangeRecord:
        """Move the record (optionally to ``status``, with field ``updates``) and append ``steps``, atomically."""
        new_status = status or record.status
        now = self._clock()
        events = [
            self._event(record, record.sequence + i + 1, step, step.status or new_status, now)
            for i, step in enumerate(steps)
        ]
        moved = record.model_copy(
            update={"status": new_status, "updated_at": now, "sequence": record.sequence + len(events), **updates}
        )
        try:
            written = self.store.transition(moved, *events)
        except ConcurrencyError:
            self.forget(record.change_id)
            raise
        if new_status is not record.status:
            _count_transition(record.status, new_status, record.target)
            if new_status.is_terminal or new_status is ChangeStatus.AWAITING_APPROVAL:
                self.signals.settled(record.change_id)
        return self._remember(written)

    def _event(
        self, record: ChangeRecord, sequence: int, step: Step, status: ChangeStatus, at: datetime | None = None
    ) -> LineageEvent:
        return LineageEvent(
            change_id=record.change_id,
            sequence=sequence,
            event=step.event,
            status=status,
            at=at or self._clock(),
            actor=step.actor,
            details=dict(step.details),
        )


def _count_transition(old: ChangeStatus, new: ChangeStatus, target: str) -> None:
    labels = {"writeback.target": target}
    if new is ChangeStatus.AWAITING_APPROVAL:
        approvals_pending.add(1, labels)
    if old is ChangeStatus.AWAITING_APPROVAL:
        approvals_pending.add(-1, labels)
    if new.is_terminal:
        changes_ended.add(1, {**labels, "writeback.status": new.value})
