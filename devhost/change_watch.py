"""Notice commits made to a SQLite file by other processes, so a loop waiting for work wakes up.

A ``threading.Condition`` wakes threads of its own process only. Work another runtime instance enqueues (an event
raised through its HTTP API, an activity result it posts) is seen by polling, as the real host polls its queues:
the Durable Functions Azure Storage provider polls its control and work-item queues, backing off when they are empty
up to ``maxQueuePollingInterval`` (learn.microsoft.com/dotnet/api/microsoft.azure.webjobs.extensions.durabletask
.azurestorageoptions.maxqueuepollinginterval; Azure/durabletask, src/DurableTask.AzureStorage/BackoffPollingHelper.cs).
The poll is ``PRAGMA data_version``, which changes when another connection has committed to the file
(sqlite.org/pragma.html#pragma_data_version): one cheap read, no scan of the tables.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager

from devhost.periodic import DaemonLoop

logger = logging.getLogger("devhost.change_watch")

DEFAULT_POLL_SECONDS = 0.05


class CommitWatcher(DaemonLoop):
    """Calls ``on_change`` when another connection has committed to the database of ``connection``."""

    kind = "watch"

    def __init__(
        self,
        name: str,
        connection: Callable[[], AbstractContextManager[sqlite3.Connection]],
        on_change: Callable[[], None],
        *,
        interval: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        super().__init__(name, interval)
        self._connection = connection
        self._on_change = on_change

    def _version(self) -> int:
        with self._connection() as db:
            return int(db.execute("PRAGMA data_version").fetchone()[0])

    def _loop(self) -> None:
        try:
            seen = self._version()
        except sqlite3.Error as exc:
            logger.error("watching %s for commits failed (%s)", self.name, type(exc).__name__)
            return
        while not self._stop.wait(self.interval):
            try:
                version = self._version()
            except sqlite3.Error as exc:
                logger.warning("watching %s for commits: %s", self.name, type(exc).__name__)
                continue
            if version != seen:
                seen = version
                self._on_change()
