"""Ports: the Protocols the core depends on. Real adapters live in ``shared.adapters``; fakes in ``shared.fakes``.

The same contract tests (tests/contract) run against each fake and its real adapter, so a fake that passes
them behaves like the service where the gateway can tell the difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared.core.models import (
    ChangeMessage,
    ChangeRecord,
    ChangeStatus,
    DuePurge,
    IdempotencyRecord,
    LineageEvent,
    Page,
    PendingChange,
    ResourceChange,
    RetentionCursor,
)
from shared.core.record_parts import PayloadRef


class IdempotencyStore(Protocol):
    def claim(self, record: IdempotencyRecord) -> IdempotencyRecord:
        """Insert if absent; the insert is the atomic decision. Raises AlreadyExistsError if the key is taken."""
        ...

    def get(self, caller: str, key: str) -> IdempotencyRecord | None: ...

    def update(self, record: IdempotencyRecord) -> IdempotencyRecord:
        """Replace with If-Match on ``record.etag``; raises ConcurrencyError when it moved, NotFoundError if gone."""
        ...

    def delete(self, caller: str, key: str) -> None:
        """Delete if present (idempotent)."""
        ...

    def purge_expired(self, now: datetime) -> int:
        """Delete every record whose ``expires_at`` is before ``now``; return how many were deleted."""
        ...


class ChangeStore(Protocol):
    def create(self, record: ChangeRecord, event: LineageEvent) -> ChangeRecord:
        """Insert the record and its first lineage event in one transaction. AlreadyExistsError if present."""
        ...

    def transition(self, record: ChangeRecord, *events: LineageEvent) -> ChangeRecord:
        """Replace the record (If-Match on ``record.etag``) and insert ``events`` in one transaction.

        ConcurrencyError when the record moved; AlreadyExistsError when an event's sequence is taken.
        Nothing is applied on either error. Returns the record with its new etag.
        """
        ...

    def get(self, change_id: str) -> ChangeRecord | None: ...

    def lineage(self, change_id: str) -> list[LineageEvent]:
        """Every lineage event of the change, in sequence order."""
        ...

    def query(
        self,
        *,
        status: ChangeStatus | None = None,
        target: str | None = None,
        resource_type: str | None = None,
        verified: bool | None = None,
        change_ids: tuple[str, str] | None = None,
        page_size: int = 50,
        continuation_token: str | None = None,
    ) -> Page[ChangeRecord]:
        """Records matching every filter given, in change id order.

        ``verified=False`` lists completed changes whose read-back drifted; ``change_ids=(low, high)`` keeps ids with
        ``low <= id < high``, read as a key range rather than a scan.
        """
        ...

    def index_resource(self, entry: ResourceChange) -> None:
        """Add a resource index row (idempotent: the same entry twice is one row)."""
        ...

    def resource_history(
        self,
        target: str,
        resource_type: str,
        resource_id: str,
        *,
        page_size: int = 50,
        continuation_token: str | None = None,
    ) -> Page[ResourceChange]:
        """Changes that touched one resource, newest first."""
        ...


class SweepState(Protocol):
    """What the outbox sweeper keeps between runs: how far it has read, and the changes to check by name."""

    def cursor(self) -> datetime | None:
        """The time of the oldest change id still worth reading (None before the first sweep)."""
        ...

    def advance(self, cursor: datetime) -> None:
        """Store the cursor (last write wins; a cursor set too low only makes the next sweep read more)."""
        ...

    def mark_pending(self, change_id: str, at: datetime) -> None:
        """Have the sweeper check this change by name (idempotent; marking again refreshes ``marked_at``)."""
        ...

    def pending(self, limit: int = 500) -> list[PendingChange]:
        """Marked changes, oldest id first."""
        ...

    def clear_pending(self, entry: PendingChange) -> None:
        """Remove the mark, unless it was marked again since ``entry`` was read (If-Match); gone is fine."""
        ...


class RetentionState(Protocol):
    """What the payload purge keeps between runs: how far it has read the changes table, and the changes to look at
    again by name once they are due."""

    def cursor(self) -> RetentionCursor | None:
        """None before the first run."""
        ...

    def advance(self, cursor: RetentionCursor) -> None:
        """Store the cursor (last write wins; a cursor set too low only makes the next run read more)."""
        ...

    def schedule(self, change_id: str, due: datetime) -> None:
        """Look at this change again once ``due`` has passed (idempotent for the same change and time)."""
        ...

    def due(self, now: datetime, limit: int = 500) -> list[DuePurge]:
        """Scheduled changes whose time has come (``due <= now``), the earliest first."""
        ...

    def done(self, entry: DuePurge) -> None:
        """Forget one scheduled entry (gone already is fine)."""
        ...


class PayloadStore(Protocol):
    def put(self, change_id: str, body: bytes, *, name: str = "request") -> PayloadRef:
        """Keep a body (the request, or a planned resource): inline when small, else as a blob (idempotent)."""
        ...

    def get(self, ref: PayloadRef) -> bytes:
        """The stored body; raises NotFoundError when the blob is gone."""
        ...

    def delete(self, ref: PayloadRef) -> None:
        """Delete the blob a reference names (an inline body lives in the record: nothing to do); gone is fine."""
        ...


class MessagePublisher(Protocol):
    def publish(self, message: ChangeMessage) -> None:
        """Send with MessageId = change id (the broker drops duplicates within its window)."""
        ...


@dataclass(frozen=True)
class FhirResponse:
    """A FHIR interaction's outcome: the resource (when returned) and what the headers said."""

    status: int
    resource: dict[str, Any] | None = None
    version_id: str | None = None
    etag: str | None = None
    location: str | None = None
    last_modified: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class FhirClient(Protocol):
    """One target FHIR R4 server. Versions are opaque strings; never assume integers."""

    def read(self, resource_type: str, resource_id: str) -> FhirResponse: ...

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> FhirResponse: ...

    def search(self, resource_type: str, params: Mapping[str, str]) -> dict[str, Any]:
        """A searchset Bundle."""
        ...

    def versions(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """Every version of one resource (its ``_history``), newest first."""
        ...

    def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> FhirResponse: ...

    def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> FhirResponse: ...

    def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: Sequence[dict[str, Any]],
        *,
        if_match: str | None = None,
    ) -> FhirResponse: ...

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """A transaction-response Bundle."""
        ...


class ApprovalNonceStore(Protocol):
    """The single-use nonces of signed approval links. ``use`` is the atomic decision: AlreadyExistsError when the
    nonce was used before; ``purge_expired`` deletes the rows of links that expired before ``now``."""

    def use(self, nonce: str, change_id: str, expires_at: datetime) -> None: ...
    def purge_expired(self, now: datetime) -> int: ...


class IntakeLimiter(Protocol):
    """A caller's rate limit on intake, for the whole deployment: ``admit`` takes one request from the caller's
    allowance, or raises RateLimitedError (with ``retry_after``) and takes nothing."""

    def admit(self, caller_key: str) -> None: ...


class ApprovalNotifier(Protocol):
    """Tells approvers a change waits for them (the approval webhook). Raises RetryableError / PermanentError."""

    def notify(self, payload: Mapping[str, Any]) -> None: ...
