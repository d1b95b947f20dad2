"""One lease per timer, so a timer fires on one runtime instance only.

"If a function app scales out to multiple instances, only a single instance of a timer-triggered function is run
across all instances" (learn.microsoft.com/azure/azure-functions/functions-bindings-timer#scale-out). The host does it
with a blob lease per timer listener, which the holder renews and others try to take. Here the lease is a row per
timer in the timers' SQLite file: ``(name, owner, until)``; taking and renewing are single statements, so two
processes cannot both hold one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

_SCHEMA = "CREATE TABLE IF NOT EXISTS timer_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)"


class TimerLeases:
    """The lease rows, seen from one owner. Times are seconds since the epoch, from the caller's clock."""

    def __init__(self, path: Path, owner: str, seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        self.seconds = seconds
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def acquire(self, name: str, now: float) -> bool:
        """Take (or keep) the lease of timer ``name``: True when this owner holds it until ``now`` + the lease."""
        with self._lock:
            row = self._db.execute(
                "INSERT INTO timer_leases (name, owner, until) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until"
                " WHERE timer_leases.owner = excluded.owner OR timer_leases.until < ? RETURNING owner",
                (name, self.owner, now + self.seconds, now),
            ).fetchone()
        return row is not None

    def holder(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT owner FROM timer_leases WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def renew(self, names: Iterable[str], now: float) -> set[str]:
        """Extend the leases this owner still holds among ``names``; returns those it holds."""
        held = set()
        for name in names:
            with self._lock:
                row = self._db.execute(
                    "UPDATE timer_leases SET until = ? WHERE name = ? AND owner = ? RETURNING name",
                    (now + self.seconds, name, self.owner),
                ).fetchone()
            if row is not None:
                held.add(name)
        return held

    def release(self, names: Iterable[str]) -> None:
        """Give leases back, so another instance takes the timers over at once."""
        with self._lock:
            self._db.executemany(
                "DELETE FROM timer_leases WHERE name = ? AND owner = ?", [(name, self.owner) for name in names]
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
