"""In-memory fakes of the storage ports, faithful to Table Storage where the gateway can tell the difference:
atomic claims, ETag checks, all-or-nothing transitions, insert-only lineage, paging with opaque tokens."""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import datetime
from typing import TypeVar

from shared.adapters.blob_payload_store import blob_name_for, inline_ref
from shared.adapters.table_change_store import newest_first_key, record_matches
from shared.adapters.table_codec import decode_token, encode_token
from shared.adapters.table_retention_state import due_bound, due_key
from shared.core.errors import AlreadyExistsError, ConcurrencyError, NotFoundError
from shared.core.models import (
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

T = TypeVar("T")


def _etag() -> str:
    return f'W/"{uuid.uuid4().hex}"'


def _page(rows: list[tuple[str, T]], page_size: int, continuation_token: str | None) -> Page[T]:
    """Page over rows sorted by key; the token carries the first key of the next page."""
    size = max(1, min(page_size, 1000))
    start_key = (decode_token(continuation_token) or {}).get("next")
    if start_key is not None and not isinstance(start_key, str):
        start_key = None  # not a token this store issued: start from the beginning, as Table Storage would
    rows = sorted(rows, key=lambda r: r[0])
    if start_key is not None:
        rows = [r for r in rows if r[0] >= start_key]
    page, rest = rows[:size], rows[size:]
    token = encode_token({"next": rest[0][0]}) if rest else None
    return Page[T](items=[item for _, item in page], continuation_token=token)


class FakeIdempotencyStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], IdempotencyRecord] = {}
        self._lock = threading.Lock()

    def claim(self, record: IdempotencyRecord) -> IdempotencyRecord:
        with self._lock:
            if (record.caller, record.key) in self._rows:
                raise AlreadyExistsError("idempotency key already exists")
            stored = record.model_copy(update={"etag": _etag()})
            self._rows[(record.caller, record.key)] = stored
            return stored.model_copy()

    def get(self, caller: str, key: str) -> IdempotencyRecord | None:
        with self._lock:
            row = self._rows.get((caller, key))
            return row.model_copy() if row else None

    def update(self, record: IdempotencyRecord) -> IdempotencyRecord:
        if record.etag is None:
            raise ValueError("update needs the record's etag (read it first)")
        with self._lock:
            current = self._rows.get((record.caller, record.key))
            if current is None:
                raise NotFoundError("idempotency key not found")
            if current.etag != record.etag:
                raise ConcurrencyError("idempotency key changed since it was read")
            stored = record.model_copy(update={"etag": _etag()})
            self._rows[(record.caller, record.key)] = stored
            return stored.model_copy()

    def delete(self, caller: str, key: str) -> None:
        with self._lock:
            self._rows.pop((caller, key), None)

    def purge_expired(self, now: datetime) -> int:
        with self._lock:
            expired = [k for k, r in self._rows.items() if r.expires_at < now]
            for k in expired:
                del self._rows[k]
            return len(expired)


class FakeChangeStore:
    def __init__(self) -> None:
        self._records: dict[str, ChangeRecord] = {}
        self._events: dict[str, dict[int, LineageEvent]] = {}
        self._index: dict[tuple[str, str, str], dict[str, ResourceChange]] = {}
        self._lock = threading.Lock()

    def create(self, record: ChangeRecord, event: LineageEvent) -> ChangeRecord:
        with self._lock:
            if record.change_id in self._records or event.sequence in self._events.get(record.change_id, {}):
                raise AlreadyExistsError(f"change {record.change_id} already exists")
            stored = record.model_copy(update={"etag": _etag()})
            self._records[record.change_id] = stored
            self._events.setdefault(record.change_id, {})[event.sequence] = event.model_copy()
            return stored.model_copy()

    def transition(self, record: ChangeRecord, *events: LineageEvent) -> ChangeRecord:
        if record.etag is None:
            raise ValueError("transition needs the record's etag (read it first)")
        with self._lock:
            current = self._records.get(record.change_id)
            if current is None:
                raise NotFoundError(f"change {record.change_id} not found")
            if current.etag != record.etag:
                raise ConcurrencyError(f"change {record.change_id} changed since it was read")
            if len(events) + 1 > 100:
                raise ValueError("a transition holds at most 99 lineage events")
            stored_events = self._events.setdefault(record.change_id, {})
            sequences = [e.sequence for e in events]
            if len(set(sequences)) != len(sequences) or any(s in stored_events for s in sequences):
                raise AlreadyExistsError(f"change {record.change_id} already exists")
            stored = record.model_copy(update={"etag": _etag()})
            self._records[record.change_id] = stored
            for event in events:
                stored_events[event.sequence] = event.model_copy()
            return stored.model_copy()

    def get(self, change_id: str) -> ChangeRecord | None:
        with self._lock:
            row = self._records.get(change_id)
            return row.model_copy() if row else None

    def lineage(self, change_id: str) -> list[LineageEvent]:
        with self._lock:
            events = self._events.get(change_id, {})
            return [events[s].model_copy() for s in sorted(events)]

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
        with self._lock:
            rows = [
                (cid, r.model_copy())
                for cid, r in self._records.items()
                if record_matches(
                    r,
                    status=status,
                    target=target,
                    resource_type=resource_type,
                    verified=verified,
                    change_ids=change_ids,
                )
            ]
        return _page(rows, page_size, continuation_token)

    def index_resource(self, entry: ResourceChange) -> None:
        with self._lock:
            key = (entry.target, entry.resource_type, entry.resource_id)
            self._index.setdefault(key, {})[newest_first_key(entry.at, entry.change_id)] = entry.model_copy()

    def resource_history(
        self,
        target: str,
        resource_type: str,
        resource_id: str,
        *,
        page_size: int = 50,
        continuation_token: str | None = None,
    ) -> Page[ResourceChange]:
        with self._lock:
            rows = list(self._index.get((target, resource_type, resource_id), {}).items())
        return _page(rows, page_size, continuation_token)


class FakeSweepState:
    def __init__(self) -> None:
        self._cursor: datetime | None = None
        self._pending: dict[str, PendingChange] = {}
        self._lock = threading.Lock()

    def cursor(self) -> datetime | None:
        return self._cursor

    def advance(self, cursor: datetime) -> None:
        self._cursor = cursor

    def mark_pending(self, change_id: str, at: datetime) -> None:
        with self._lock:
            self._pending[change_id] = PendingChange(change_id=change_id, marked_at=at, etag=_etag())

    def pending(self, limit: int = 500) -> list[PendingChange]:
        with self._lock:
            return [e.model_copy() for _, e in sorted(self._pending.items())[: max(1, limit)]]

    def clear_pending(self, entry: PendingChange) -> None:
        with self._lock:
            current = self._pending.get(entry.change_id)
            if current is not None and current.etag == entry.etag:
                del self._pending[entry.change_id]


class FakeRetentionState:
    def __init__(self) -> None:
        self._cursor: RetentionCursor | None = None
        self._due: dict[str, DuePurge] = {}
        self._lock = threading.Lock()

    def cursor(self) -> RetentionCursor | None:
        with self._lock:
            return self._cursor.model_copy() if self._cursor else None

    def advance(self, cursor: RetentionCursor) -> None:
        with self._lock:
            self._cursor = cursor.model_copy()

    def schedule(self, change_id: str, due: datetime) -> None:
        key = due_key(due, change_id)
        with self._lock:
            self._due[key] = DuePurge(change_id=change_id, due=due, key=key)

    def due(self, now: datetime, limit: int = 500) -> list[DuePurge]:
        bound = due_bound(now)
        with self._lock:
            return [e.model_copy() for k, e in sorted(self._due.items()) if k < bound][: max(1, limit)]

    def done(self, entry: DuePurge) -> None:
        with self._lock:
            self._due.pop(entry.key or due_key(entry.due, entry.change_id), None)

    def scheduled(self) -> list[DuePurge]:
        """Every scheduled entry, the earliest first (for tests)."""
        with self._lock:
            return [e.model_copy() for _, e in sorted(self._due.items())]


class FakePayloadStore:
    def __init__(self, *, inline_max_bytes: int = 30_000) -> None:
        self._blobs: dict[str, bytes] = {}
        self._inline_max = inline_max_bytes
        self._lock = threading.Lock()

    def put(self, change_id: str, body: bytes, *, name: str = "request") -> PayloadRef:
        ref = inline_ref(body, self._inline_max)
        if ref is not None:
            return ref
        blob = blob_name_for(change_id, name)
        with self._lock:
            self._blobs[blob] = bytes(body)
        return PayloadRef(kind="blob", sha256=hashlib.sha256(body).hexdigest(), size=len(body), blob_name=blob)

    def get(self, ref: PayloadRef) -> bytes:
        if ref.kind == "inline":
            return (ref.inline or "").encode("utf-8")
        with self._lock:
            body = self._blobs.get(ref.blob_name or "")
        if body is None:
            raise NotFoundError(f"payload blob {ref.blob_name} not found")
        return body

    def delete(self, ref: PayloadRef) -> None:
        if ref.kind == "blob":
            with self._lock:
                self._blobs.pop(ref.blob_name or "", None)

    def blob_names(self) -> list[str]:
        """The names of the blobs held (for tests)."""
        with self._lock:
            return sorted(self._blobs)
