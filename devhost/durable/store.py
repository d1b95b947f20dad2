"""SQLite persistence for the local Durable Functions engine: instances, history, inbox, work items.

One database file in WAL mode, which several runtime processes may share. Every change an episode makes (history
appended, inbox rows consumed, activities and timers scheduled, status updated) commits in one transaction, so a
process killed at any point leaves a consistent state: an episode that did not commit runs again, an activity that
did not report runs again.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT,
    output TEXT,
    custom_status TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    parent_instance_id TEXT,
    parent_execution_id TEXT,
    parent_task_id INTEGER,
    parent_spec TEXT,
    next_task_id INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_status ON instances(status);
CREATE TABLE IF NOT EXISTS history (
    instance_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE TABLE IF NOT EXISTS actions (
    instance_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    action_type INTEGER NOT NULL,
    name TEXT,
    task_id INTEGER,
    PRIMARY KEY (instance_id, idx)
);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution_id TEXT,
    event TEXT NOT NULL,
    meta TEXT,
    timer_id INTEGER,
    visible_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_visible ON inbox(visible_at, instance_id);
CREATE INDEX IF NOT EXISTS inbox_instance ON inbox(instance_id, id);
CREATE TABLE IF NOT EXISTS work (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    input TEXT,
    retry TEXT,
    attempt INTEGER NOT NULL DEFAULT 1,
    leased_until REAL NOT NULL DEFAULT 0,
    leased_by TEXT
);
CREATE INDEX IF NOT EXISTS work_lease ON work(leased_until, id);
"""


class DurableStore:
    """A single SQLite connection shared by the engine's threads, serialised by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (the OS keeps the writes); only a power loss could lose the last commit.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(work)")}
        if "leased_by" not in columns:  # a state folder from before leases had owners
            try:
                self._conn.execute("ALTER TABLE work ADD COLUMN leased_by TEXT")
            except sqlite3.OperationalError as exc:  # another process starting on the same folder added it first
                if "duplicate column" not in str(exc):
                    raise
        self._lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (re-entrant: nested calls join the outer one)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()
