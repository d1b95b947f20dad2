"""Process-local hints that a change has settled (ended, or waits for a person), for answers held with
``Prefer: wait``.

A hint is never the truth: it only wakes a waiting request early, which then reads the change from storage. A change
settled by another instance gives no hint here, and the waiting request finds it by reading storage on its own
schedule. The journal gives the hint from whatever thread recorded the transition; the waiting request waits on an
``asyncio.Event`` of its own loop, set through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading


class SettleSignals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def listen(self, change_id: str) -> asyncio.Event:
        """An event set when this process records ``change_id`` settled; call from a running event loop."""
        event = asyncio.Event()
        with self._lock:
            self._listeners.setdefault(change_id, []).append((asyncio.get_running_loop(), event))
        return event

    def forget(self, change_id: str, event: asyncio.Event) -> None:
        with self._lock:
            listeners = [pair for pair in self._listeners.get(change_id, []) if pair[1] is not event]
            if listeners:
                self._listeners[change_id] = listeners
            else:
                self._listeners.pop(change_id, None)

    def settled(self, change_id: str) -> None:
        with self._lock:
            listeners = self._listeners.pop(change_id, [])
        for loop, event in listeners:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)
