"""A daemon thread that a runtime part starts and stops: the lease renewer and the commit watcher run on one."""

from __future__ import annotations

import threading


class DaemonLoop:
    """Runs ``_loop`` on a daemon thread named ``devhost-<kind>-<name>``; ``_loop`` waits on ``self._stop``."""

    kind = "loop"

    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"devhost-{self.kind}-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        raise NotImplementedError
