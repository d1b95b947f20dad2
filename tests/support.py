"""Small helpers for tests of any tier: a clock the test sets by hand, and one call made from many threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ManualClock(Generic[T]):
    """A ``clock=`` callable that answers ``now`` until the test changes it."""

    def __init__(self, now: T) -> None:
        self.now = now

    def __call__(self) -> T:
        return self.now


def from_threads(call: Callable[[], T], count: int) -> list[T]:
    """``call()`` from ``count`` threads released together; what each returned, in the order they returned."""
    start = threading.Barrier(count)
    results: list[T] = []
    lock = threading.Lock()

    def run() -> None:
        start.wait()
        result = call()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
