"""A target's rate limit and circuit breaker for the whole deployment, kept in Table Storage.

Azure runs the app on many instances; a limit kept in each process's memory lets N instances send N times the
target's configured rate. So every instance decides from one entity per target (PartitionKey = target id) and moves
it only with a conditional write (``If-Match`` on its ETag): two instances never both take the same slot, and a
412 means another instance moved first, so this one reads the entity again and decides again.

- Rate limit (GCRA, the "virtual scheduling" form of a token bucket without burst): ``NextSlot`` is the earliest
  time, in seconds since the epoch, the next call may start. A call takes ``max(NextSlot, now)`` and moves
  ``NextSlot`` on by ``(1 + margin) / rate``, so any ``rate`` consecutive calls span at least ``1 + margin`` seconds:
  the margin absorbs the jitter between taking a slot and the request reaching the target. A slot further away
  than ``max_wait`` is not taken: the call raises ``RetryableError`` with the wait (the change waits on a timer).
- Circuit breaker: ``Failures`` counts transient failures in a row; at the threshold ``OpenedAt`` is set and every
  instance fails fast for ``cooldown`` seconds; then one instance takes the trial (``TrialUntil``: if that instance
  dies, the trial lapses after another cooldown and someone else tries). A success closes the breaker.

Instances' clocks are assumed to agree (Azure's hosts keep NTP time; a skew of a few milliseconds shifts slots by
as much). Cost, per call to the target: one conditional write when a rate is set (plus a read, and the write again,
each time another instance moved the entity first; the entity is cached with its ETag); with a breaker only, one
read at most every ``refresh`` seconds per instance; failures and the successes that end them write once more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from azure.data.tables import TableClient, TableServiceClient

from shared.adapters.fhir_guard import CircuitOpenError
from shared.adapters.storage_edge import storage_adapter
from shared.adapters.table_maintenance import ensure_table, entity_or_none, write_if_unchanged
from shared.core.errors import RetryableError

GUARD_ROW = "guard"
MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class GuardState:
    next_slot: float = 0.0
    failures: int = 0
    opened_at: float | None = None
    trial_until: float | None = None

    @classmethod
    def of(cls, entity: dict[str, Any]) -> GuardState:
        return cls(
            next_slot=float(entity.get("NextSlot") or 0.0),
            failures=int(entity.get("Failures") or 0),
            opened_at=_float_or_none(entity.get("OpenedAt")),
            trial_until=_float_or_none(entity.get("TrialUntil")),
        )

    def entity(self, target_id: str) -> dict[str, Any]:
        return {
            "PartitionKey": target_id,
            "RowKey": GUARD_ROW,
            "NextSlot": self.next_slot,
            "Failures": self.failures,
            "OpenedAt": self.opened_at if self.opened_at is not None else -1.0,
            "TrialUntil": self.trial_until if self.trial_until is not None else -1.0,
        }


def _float_or_none(value: Any) -> float | None:
    return float(value) if value is not None and float(value) >= 0 else None


@storage_adapter("ensure_tables")
class GuardTable:
    """The guards table: one entity per target."""

    def __init__(self, service: TableServiceClient, *, prefix: str = "writeback") -> None:
        self.table: TableClient = service.get_table_client(f"{prefix}guards")

    def ensure_tables(self) -> None:
        ensure_table(self.table)

    def read(self, target_id: str) -> tuple[GuardState, str | None]:
        entity = entity_or_none(self.table, target_id, GUARD_ROW)
        if entity is None:
            return GuardState(), None
        return GuardState.of(entity), entity.metadata.get("etag")

    def write(self, target_id: str, state: GuardState, etag: str | None) -> str | None:
        """Store ``state`` if the entity is still at ``etag`` (absent when None); the new ETag, or None on a race."""
        return write_if_unchanged(self.table, state.entity(target_id), etag) or None


class TableTargetGuard:
    """The deployment-wide rate limit and circuit breaker of one target (see the module docstring)."""

    def __init__(
        self,
        table: GuardTable,
        target_id: str,
        *,
        rate: float | None,
        margin: float = 0.1,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        refresh: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.table = table
        self.target_id = target_id
        self.interval = (1.0 + margin) / rate if rate else None
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.refresh = refresh
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._cached: tuple[GuardState, str | None, float] | None = None

    # --- the entity, cached with its ETag -------------------------------------------------------------------

    def _state(self, *, fresh: bool = False) -> tuple[GuardState, str | None]:
        with self._lock:
            cached = self._cached
        if not fresh and cached is not None and self._clock() - cached[2] < self.refresh:
            return cached[0], cached[1]
        state, etag = self.table.read(self.target_id)
        self._remember(state, etag)
        return state, etag

    def _remember(self, state: GuardState, etag: str | None) -> None:
        with self._lock:
            self._cached = (state, etag, self._clock())

    def _move(self, decide: Callable[[GuardState, float], GuardState | None]) -> GuardState | None:
        """Apply ``decide`` (None: nothing to store) until a conditional write of its answer succeeds."""
        fresh = False
        for _ in range(MAX_ATTEMPTS):
            state, etag = self._state(fresh=fresh)
            moved = decide(state, self._clock())
            if moved is None or moved == state:
                return moved
            new_etag = self.table.write(self.target_id, moved, etag)
            if new_etag is not None:
                self._remember(moved, new_etag)
                return moved
            fresh = True  # another instance moved it first
        raise RetryableError(detail="the target's guard is too contended", retry_after=1.0)

    # --- the guard -------------------------------------------------------------------------------------------

    def admit(self, max_wait: float) -> None:
        """Wait for this call's slot; CircuitOpenError or RetryableError (with the wait) when it may not go now."""
        slot: list[float] = []

        def decide(state: GuardState, now: float) -> GuardState | None:
            slot.clear()
            moved = self._trial_or_refuse(state, now)
            if self.interval is None:
                return moved
            start = max(moved.next_slot, now)
            if start - now > max_wait:
                raise RetryableError(detail="rate limit for the target reached", retry_after=start - now)
            slot.append(start)
            return replace(moved, next_slot=start + self.interval)

        self._move(decide)
        if slot:
            wait = slot[0] - self._clock()
            if wait > 0:
                self._sleep(wait)

    def _trial_or_refuse(self, state: GuardState, now: float) -> GuardState:
        if state.opened_at is None:
            return state
        remaining = state.opened_at + self.cooldown - now
        if remaining > 0:
            raise CircuitOpenError(detail="the target failed repeatedly", retry_after=max(remaining, 1.0))
        if state.trial_until is not None and state.trial_until > now:
            raise CircuitOpenError(detail="the target failed repeatedly", retry_after=max(state.trial_until - now, 1.0))
        return replace(state, trial_until=now + self.cooldown)  # half-open: this call is the one trial

    def succeeded(self) -> None:
        def decide(state: GuardState, now: float) -> GuardState | None:
            if state.failures == 0 and state.opened_at is None:
                return None
            return replace(state, failures=0, opened_at=None, trial_until=None)

        self._move(decide)

    def failed(self) -> None:
        def decide(state: GuardState, now: float) -> GuardState:
            failures = state.failures + 1
            if state.trial_until is not None or failures >= self.failure_threshold:
                return replace(state, failures=failures, opened_at=now, trial_until=None)
            return replace(state, failures=failures)

        self._move(decide)
