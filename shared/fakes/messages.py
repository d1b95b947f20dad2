"""An in-memory ``MessagePublisher`` with Service Bus duplicate detection.

Like a queue with duplicate detection on: a message whose ``MessageId`` (the change id, see
``shared.adapters.servicebus_publisher.message_id_for``) was accepted within the window is silently dropped,
and the send still "succeeds". ``sent`` holds the accepted messages in order; ``fail_next`` makes sends fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.adapters.servicebus_publisher import message_id_for
from shared.core.models import ChangeMessage

DEFAULT_DUPLICATE_WINDOW = timedelta(minutes=10)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Failure:
    error: Exception
    remaining: int


class FakeMessagePublisher:
    def __init__(
        self,
        *,
        duplicate_window: timedelta = DEFAULT_DUPLICATE_WINDOW,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.duplicate_window = duplicate_window
        self._clock = clock
        self._lock = threading.Lock()
        self._accepted_at: dict[str, datetime] = {}
        self._failures: list[_Failure] = []
        self.sent: list[ChangeMessage] = []
        """Messages the broker accepted (duplicates within the window are not here)."""
        self.dropped: list[ChangeMessage] = []
        """Sends that "succeeded" but were dropped as duplicates."""

    def publish(self, message: ChangeMessage) -> None:
        with self._lock:
            if self._failures:
                failure = self._failures[0]
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.pop(0)
                raise failure.error
            now = self._clock()
            key = message_id_for(message)
            seen = self._accepted_at.get(key)
            if seen is not None and now - seen < self.duplicate_window:
                self.dropped.append(message)
                return
            self._accepted_at[key] = now
            self.sent.append(message)

    def fail_next(self, error: Exception, count: int = 1) -> None:
        """The next ``count`` sends raise ``error`` (nothing is accepted)."""
        with self._lock:
            self._failures.append(_Failure(error, count))

    def take(self) -> list[ChangeMessage]:
        """Remove and return the accepted messages (as a consumer would receive them); the window is kept."""
        with self._lock:
            taken, self.sent = self.sent, []
            return taken
