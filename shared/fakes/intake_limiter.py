"""An in-memory ``IntakeLimiter``: the same GCRA as the Table adapter, one TAT per caller, for one process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from shared.core.rate_limits import Gcra


class FakeIntakeLimiter:
    def __init__(self, limit: Gcra, *, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def admit(self, caller_key: str) -> None:
        with self._lock:
            self._tats[caller_key] = self.limit.admit(self._tats.get(caller_key, 0.0), self._clock())
