"""In-memory fake of ``ApprovalNonceStore``: one row per nonce, whatever the change; the insert decides."""

from __future__ import annotations

import threading
from datetime import datetime

from shared.core.errors import AlreadyExistsError


class FakeApprovalNonceStore:
    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, datetime]] = {}
        self._lock = threading.Lock()

    def use(self, nonce: str, change_id: str, expires_at: datetime) -> None:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        with self._lock:
            if nonce in self._rows:
                raise AlreadyExistsError("approval link nonce already exists")
            self._rows[nonce] = (change_id, expires_at)

    def purge_expired(self, now: datetime) -> int:
        with self._lock:
            expired = [k for k, (_, expires_at) in self._rows.items() if expires_at < now]
            for k in expired:
                del self._rows[k]
            return len(expired)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
