"""A local Service Bus queue emulator on SQLite: the semantics the app relies on, without a broker.

What it honours (FACTS.md "Service Bus"): duplicate detection on ``MessageId`` only within a window (a duplicate
send succeeds but is dropped), peek-lock with lock tokens and lock expiry, delivery counts, abandon, dead-lettering
after ``max_delivery_count`` deliveries (``MaxDeliveryCountExceeded``) or on TTL expiry (``TTLExpiredException``),
scheduled messages, the 256 KB message limit, FIFO by sequence number, and sessions delivered FIFO one receiver at
a time.

Everything lives in one SQLite file in WAL mode; every operation is one ``BEGIN IMMEDIATE`` transaction, so a
committed send, receive or settlement survives a ``kill -9`` and a half-done one never shows. One connection is
shared by the threads of a process behind a lock; other processes using the same file are serialised by SQLite.

Time-driven transitions (lock expiry, TTL expiry, dead-lettering a lapsed message at the max delivery count) are
applied lazily, at the start of every operation that reads the queue, so no background thread is needed and an
injected ``clock`` makes them deterministic.

Sessions are kept small: a session is locked while any of its messages is locked, so a session's next message is
handed out only when the previous one has been settled (or its lock lapsed), and one ``receive`` returns messages
of a single session. That gives FIFO per session and one receiver per session without session receivers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024  # Standard tier
MAX_MESSAGE_ID_LENGTH = 128
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
TTL_EXPIRED = "TTLExpiredException"

PropertyValue = str | int | float | bool | None

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    properties TEXT NOT NULL,
    content_type TEXT,
    correlation_id TEXT,
    subject TEXT,
    session_id TEXT,
    enqueued_at REAL NOT NULL,
    scheduled INTEGER NOT NULL DEFAULT 0,
    ttl REAL,
    expires_at REAL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT UNIQUE,
    locked_until REAL,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    dl_reason TEXT,
    dl_description TEXT,
    dl_at REAL
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, dead_lettered, seq);
CREATE INDEX IF NOT EXISTS messages_by_lock ON messages (queue, locked_until);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (queue, expires_at);
CREATE TABLE IF NOT EXISTS duplicates (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (queue, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS duplicates_by_time ON duplicates (queue, sent_at);
"""

_COLUMNS = (
    "seq, queue, message_id, body, properties, content_type, correlation_id, subject, session_id, enqueued_at, "
    "scheduled, ttl, expires_at, delivery_count, lock_token, locked_until, dl_reason, dl_description, dl_at"
)

# A message can be handed out: in the queue (not dead-lettered, not scheduled for later) and not under a live lock.
_AVAILABLE = "queue = ? AND dead_lettered = 0 AND enqueued_at <= ? AND (locked_until IS NULL OR locked_until <= ?)"


class ServiceBusEmulatorError(Exception):
    """Base of the emulator's own errors."""


class MessageLockLostError(ServiceBusEmulatorError):
    """The lock token is unknown, already settled, or its lock expired (the message may be redelivered)."""


class MessageSizeExceededError(ServiceBusEmulatorError, ValueError):
    """The message (body plus properties) is larger than the queue accepts."""


@dataclass(frozen=True)
class ReceivedMessage:
    """A message handed out under a peek-lock; settle it with its ``lock_token``."""

    queue: str
    body: bytes
    message_id: str
    sequence_number: int
    delivery_count: int
    enqueued_time: datetime
    locked_until: datetime
    lock_token: str
    application_properties: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    correlation_id: str | None = None
    subject: str | None = None
    session_id: str | None = None
    expires_at: datetime | None = None
    time_to_live: timedelta | None = None
    scheduled_enqueue_time: datetime | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A message in a queue's dead-letter sub-queue (kept until purged, as in Service Bus)."""

    queue: str
    message_id: str
    sequence_number: int
    body: bytes
    application_properties: dict[str, Any]
    reason: str | None
    description: str | None
    delivery_count: int
    enqueued_time: datetime
    dead_lettered_time: datetime
    content_type: str | None = None
    correlation_id: str | None = None
    subject: str | None = None
    session_id: str | None = None


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _encode_properties(properties: Mapping[str, Any] | None) -> str:
    if not properties:
        return "{}"
    for key, value in properties.items():
        if not isinstance(key, str):
            raise TypeError(f"application property names must be strings, got {type(key).__name__}")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise TypeError(f"application property {key!r} has unsupported type {type(value).__name__}")
    return json.dumps(dict(properties), separators=(",", ":"))


class LocalServiceBus:
    """Queues with Service Bus semantics in one SQLite file. Thread-safe; open it once per process and share it."""

    def __init__(
        self,
        db_path: Path,
        *,
        lock_duration: float = 60.0,
        max_delivery_count: int = 10,
        duplicate_window: float = 600.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lock_duration <= 0:
            raise ValueError("lock_duration must be positive")
        if max_delivery_count < 1:
            raise ValueError("max_delivery_count must be at least 1")
        self.db_path = Path(db_path)
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.duplicate_window = duplicate_window
        self.max_message_size = max_message_size
        self._clock = clock
        self._lock = threading.RLock()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses nothing on a process crash (only on power loss), and is much faster than FULL.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._db.executescript(_SCHEMA)
        # Sends made through this process, so its receivers wake at once (Service Bus pushes to an AMQP receiver
        # with link credit; a send from another process is still found by the receivers' polling).
        self._arrivals = threading.Condition()
        self._sent = 0

    # --- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LocalServiceBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- sending -----------------------------------------------------------------------------------------

    def send(
        self,
        queue: str,
        *,
        body: bytes,
        message_id: str | None = None,
        application_properties: Mapping[str, PropertyValue] | None = None,
        content_type: str | None = None,
        correlation_id: str | None = None,
        subject: str | None = None,
        session_id: str | None = None,
        time_to_live: float | None = None,
        scheduled_enqueue_time: datetime | None = None,
    ) -> bool:
        """Enqueue a message. Returns False when it was dropped as a duplicate (the send still succeeded)."""
        _check_queue_name(queue)
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError("body must be bytes")
        body = bytes(body)
        message_id = message_id if message_id is not None else uuid.uuid4().hex
        if not message_id or len(message_id) > MAX_MESSAGE_ID_LENGTH:
            raise ValueError(f"message_id must be 1 to {MAX_MESSAGE_ID_LENGTH} characters")
        if time_to_live is not None and time_to_live <= 0:
            raise ValueError("time_to_live must be positive")
        if scheduled_enqueue_time is not None and scheduled_enqueue_time.tzinfo is None:
            raise ValueError("scheduled_enqueue_time must be timezone-aware")
        properties = _encode_properties(application_properties)
        size = len(body) + len(properties.encode())
        if size > self.max_message_size:
            raise MessageSizeExceededError(f"message of {size} bytes exceeds the limit of {self.max_message_size}")

        with self._transaction() as db:
            now = self._clock()
            visible_at = now
            if scheduled_enqueue_time is not None:
                visible_at = max(now, scheduled_enqueue_time.timestamp())
            expires_at = visible_at + time_to_live if time_to_live is not None else None
            db.execute("DELETE FROM duplicates WHERE queue = ? AND sent_at <= ?", (queue, now - self.duplicate_window))
            seen = db.execute(
                "SELECT 1 FROM duplicates WHERE queue = ? AND message_id = ?", (queue, message_id)
            ).fetchone()
            if seen is not None:
                return False
            db.execute("INSERT INTO duplicates (queue, message_id, sent_at) VALUES (?, ?, ?)", (queue, message_id, now))
            db.execute(
                "INSERT INTO messages (queue, message_id, body, properties, content_type, correlation_id, subject,"
                " session_id, enqueued_at, scheduled, ttl, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    queue,
                    message_id,
                    body,
                    properties,
                    content_type,
                    correlation_id,
                    subject,
                    session_id,
                    visible_at,
                    int(scheduled_enqueue_time is not None),
                    time_to_live,
                    expires_at,
                ),
            )
        with self._arrivals:
            self._sent += 1
            self._arrivals.notify_all()
        return True

    def sends_seen(self) -> int:
        """A counter of the sends made through this object, to wait on with ``wait_for_send``."""
        with self._arrivals:
            return self._sent

    def wait_for_send(self, seen: int, timeout: float) -> None:
        """Return when a send was made through this object since ``sends_seen()`` gave ``seen``, or ``timeout``."""
        with self._arrivals:
            self._arrivals.wait_for(lambda: self._sent != seen, timeout)

    # --- receiving and settling --------------------------------------------------------------------------

    def receive(self, queue: str, *, max_messages: int = 1, session_id: str | None = None) -> list[ReceivedMessage]:
        """Peek-lock up to ``max_messages`` available messages, oldest first; an empty list when there are none.

        With ``session_id`` only that session's messages are considered, and none while the session is locked.
        Without it, the oldest available message decides: plain messages, or the messages of one unlocked session.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        with self._transaction() as db:
            now = self._clock()
            self._apply_expiry(db, queue, now)
            seqs = self._pick(db, queue, now, max_messages, session_id)
            for seq in seqs:
                db.execute(
                    "UPDATE messages SET delivery_count = delivery_count + 1, lock_token = ?, locked_until = ?"
                    " WHERE seq = ?",
                    (str(uuid.uuid4()), now + self.lock_duration, seq),
                )
            if not seqs:
                return []
            marks = ",".join("?" * len(seqs))
            rows = db.execute(f"SELECT {_COLUMNS} FROM messages WHERE seq IN ({marks}) ORDER BY seq", seqs).fetchall()  # noqa: S608
        return [_received(row) for row in rows]

    def complete(self, lock_token: str) -> None:
        """Remove the message for good."""
        with self._transaction() as db:
            now = self._clock()
            cursor = db.execute(
                "DELETE FROM messages WHERE lock_token = ? AND locked_until > ? AND dead_lettered = 0",
                (lock_token, now),
            )
            if cursor.rowcount == 0:
                raise MessageLockLostError(f"lock {lock_token} is lost or expired")

    def abandon(self, lock_token: str) -> None:
        """Release the lock now; at the max delivery count the message goes to the dead-letter queue instead."""
        with self._transaction() as db:
            now = self._clock()
            seq, delivery_count = self._locked(db, lock_token, now)
            if delivery_count >= self.max_delivery_count:
                self._dead_letter_rows(db, [seq], MAX_DELIVERY_COUNT_EXCEEDED, self._max_delivery_text(), now)
            else:
                db.execute("UPDATE messages SET lock_token = NULL, locked_until = NULL WHERE seq = ?", (seq,))

    def dead_letter(self, lock_token: str, reason: str | None = None, description: str | None = None) -> None:
        """Move the message to the dead-letter sub-queue with the given reason."""
        with self._transaction() as db:
            now = self._clock()
            seq, _ = self._locked(db, lock_token, now)
            self._dead_letter_rows(db, [seq], reason, description, now)

    def renew_lock(self, lock_token: str) -> datetime:
        """Extend the lock by the lock duration from now; returns the new ``locked_until``."""
        with self._transaction() as db:
            now = self._clock()
            seq, _ = self._locked(db, lock_token, now)
            db.execute("UPDATE messages SET locked_until = ? WHERE seq = ?", (now + self.lock_duration, seq))
        return _utc(now + self.lock_duration)

    # --- inspection --------------------------------------------------------------------------------------

    def dead_letters(self, queue: str) -> list[DeadLetter]:
        """The dead-letter sub-queue, oldest first."""
        with self._transaction() as db:
            now = self._clock()
            self._apply_expiry(db, queue, now)
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE queue = ? AND dead_lettered = 1 ORDER BY seq",  # noqa: S608
                (queue,),
            ).fetchall()
        return [_dead_letter(row) for row in rows]

    def counts(self, queue: str) -> dict[str, int]:
        """``active`` (available now), ``locked``, ``deadLetter`` and ``scheduled`` (not yet visible) messages."""
        with self._transaction() as db:
            now = self._clock()
            self._apply_expiry(db, queue, now)
            row = db.execute(
                "SELECT"
                " COALESCE(SUM(dead_lettered = 0 AND enqueued_at <= ? AND (locked_until IS NULL OR locked_until <= ?)),"
                " 0),"
                " COALESCE(SUM(dead_lettered = 0 AND locked_until > ?), 0),"
                " COALESCE(SUM(dead_lettered = 1), 0),"
                " COALESCE(SUM(dead_lettered = 0 AND enqueued_at > ?), 0)"
                " FROM messages WHERE queue = ?",
                (now, now, now, now, queue),
            ).fetchone()
        return {"active": row[0], "locked": row[1], "deadLetter": row[2], "scheduled": row[3]}

    def queues(self) -> list[str]:
        """Every queue that holds messages or remembers message ids."""
        with self._lock:
            rows = self._db.execute(
                "SELECT queue FROM messages UNION SELECT queue FROM duplicates ORDER BY 1"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def purge(self, queue: str) -> int:
        """Delete every message of the queue (active, locked, scheduled, dead-lettered) and its duplicate history."""
        with self._transaction() as db:
            removed = db.execute("DELETE FROM messages WHERE queue = ?", (queue,)).rowcount
            db.execute("DELETE FROM duplicates WHERE queue = ?", (queue,))
        return int(removed)

    # --- internals ---------------------------------------------------------------------------------------

    def _max_delivery_text(self) -> str:
        return f"Message could not be consumed after {self.max_delivery_count} delivery attempts."

    def _locked(self, db: sqlite3.Connection, lock_token: str, now: float) -> tuple[int, int]:
        row = db.execute(
            "SELECT seq, delivery_count FROM messages WHERE lock_token = ? AND locked_until > ? AND dead_lettered = 0",
            (lock_token, now),
        ).fetchone()
        if row is None:
            raise MessageLockLostError(f"lock {lock_token} is lost or expired")
        return int(row[0]), int(row[1])

    def _dead_letter_rows(
        self, db: sqlite3.Connection, seqs: list[int], reason: str | None, description: str | None, now: float
    ) -> None:
        db.executemany(
            "UPDATE messages SET dead_lettered = 1, dl_reason = ?, dl_description = ?, dl_at = ?,"
            " lock_token = NULL, locked_until = NULL WHERE seq = ?",
            [(reason, description, now, seq) for seq in seqs],
        )

    def _apply_expiry(self, db: sqlite3.Connection, queue: str, now: float) -> None:
        """Dead-letter what time has decided: expired TTLs, and lapsed locks at the max delivery count."""
        expired = db.execute(
            "SELECT seq FROM messages WHERE queue = ? AND dead_lettered = 0 AND expires_at <= ?"
            " AND (locked_until IS NULL OR locked_until <= ?)",
            (queue, now, now),
        ).fetchall()
        if expired:
            self._dead_letter_rows(
                db, [r[0] for r in expired], TTL_EXPIRED, "The message expired and was dead lettered.", now
            )
        exhausted = db.execute(
            "SELECT seq FROM messages WHERE queue = ? AND locked_until <= ? AND dead_lettered = 0"
            " AND delivery_count >= ?",
            (queue, now, self.max_delivery_count),
        ).fetchall()
        if exhausted:
            self._dead_letter_rows(
                db, [r[0] for r in exhausted], MAX_DELIVERY_COUNT_EXCEEDED, self._max_delivery_text(), now
            )

    def _pick(self, db: sqlite3.Connection, queue: str, now: float, limit: int, session_id: str | None) -> list[int]:
        if session_id is None:
            plain = [
                int(r[0])
                for r in db.execute(
                    f"SELECT seq FROM messages WHERE {_AVAILABLE} AND session_id IS NULL ORDER BY seq LIMIT ?",  # noqa: S608
                    (queue, now, now, limit),
                )
            ]
            head = db.execute(
                f"SELECT seq, session_id FROM messages WHERE {_AVAILABLE} AND session_id IS NOT NULL"  # noqa: S608
                " AND session_id NOT IN (SELECT session_id FROM messages WHERE queue = ? AND dead_lettered = 0"
                " AND session_id IS NOT NULL AND locked_until > ?) ORDER BY seq LIMIT 1",
                (queue, now, now, queue, now),
            ).fetchone()
            if head is None or (plain and plain[0] < head[0]):
                return plain
            session_id = str(head[1])
        elif db.execute(
            "SELECT 1 FROM messages WHERE queue = ? AND session_id = ? AND dead_lettered = 0 AND locked_until > ?",
            (queue, session_id, now),
        ).fetchone():
            return []
        return [
            int(r[0])
            for r in db.execute(
                f"SELECT seq FROM messages WHERE {_AVAILABLE} AND session_id = ? ORDER BY seq LIMIT ?",  # noqa: S608
                (queue, now, now, session_id, limit),
            )
        ]


def _check_queue_name(queue: str) -> None:
    if not queue or len(queue) > 260 or not all(c.isalnum() or c in "-._/" for c in queue) or queue[0] in "-._/":
        raise ValueError(f"invalid queue name {queue!r}")


def _optional_time(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else _utc(timestamp)


def _message_fields(row: sqlite3.Row) -> dict[str, Any]:
    """The fields a received message and a dead letter both take from a message row."""
    return {
        "queue": row["queue"],
        "body": bytes(row["body"]),
        "message_id": row["message_id"],
        "sequence_number": row["seq"],
        "delivery_count": row["delivery_count"],
        "enqueued_time": _utc(row["enqueued_at"]),
        "application_properties": json.loads(row["properties"]),
        "content_type": row["content_type"],
        "correlation_id": row["correlation_id"],
        "subject": row["subject"],
        "session_id": row["session_id"],
    }


def _received(row: sqlite3.Row) -> ReceivedMessage:
    return ReceivedMessage(
        **_message_fields(row),
        locked_until=_utc(row["locked_until"]),
        lock_token=row["lock_token"],
        expires_at=_optional_time(row["expires_at"]),
        time_to_live=None if row["ttl"] is None else timedelta(seconds=row["ttl"]),
        scheduled_enqueue_time=_utc(row["enqueued_at"]) if row["scheduled"] else None,
    )


def _dead_letter(row: sqlite3.Row) -> DeadLetter:
    return DeadLetter(
        **_message_fields(row),
        reason=row["dl_reason"],
        description=row["dl_description"],
        dead_lettered_time=_utc(row["dl_at"]),
    )
