"""A per-scope bearer token cache shared by the token providers: one fetch per scope at a time, refreshed a margin
before expiry (at most half the token's lifetime, so a short-lived token is not fetched on every call)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ScopedTokenCache:
    def __init__(self, *, refresh_margin: float, clock: Callable[[], float] = time.time) -> None:
        self._margin = refresh_margin
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}  # scope -> (token, refresh_at)
        self._lock = threading.Lock()
        self._scope_locks: dict[str, threading.Lock] = {}

    def get(self, scope: str, fetch: Callable[[], tuple[str, float]]) -> str:
        """The cached token for ``scope``, or ``fetch()`` → (token, expires_at as epoch seconds) when stale."""
        cached = self._fresh(scope)
        if cached is not None:
            return cached
        with self._scope_lock(scope):
            cached = self._fresh(scope)  # another thread may have fetched it while we waited
            if cached is not None:
                return cached
            fetched_at = self._clock()
            token, expires_at = fetch()
            lifetime = max(0.0, expires_at - fetched_at)
            with self._lock:
                self._cache[scope] = (token, expires_at - min(self._margin, lifetime / 2))
            return token

    def invalidate(self, scope: str | None = None) -> None:
        with self._lock:
            if scope is None:
                self._cache.clear()
            else:
                self._cache.pop(scope, None)

    def _fresh(self, scope: str) -> str | None:
        with self._lock:
            entry = self._cache.get(scope)
        if entry is not None and self._clock() < entry[1]:
            return entry[0]
        return None

    def _scope_lock(self, scope: str) -> threading.Lock:
        with self._lock:
            lock = self._scope_locks.get(scope)
            if lock is None:
                lock = self._scope_locks[scope] = threading.Lock()
            return lock
