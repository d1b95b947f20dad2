"""Leases on shared work: who holds an item, until when, and a thread that keeps a holder's leases alive.

Several runtime processes share one state folder, as the instances of a function app share its storage account.
A process takes an item of work (an activity, a timer's schedule) by writing its owner id and an expiry onto the
item in one SQLite transaction, renews what it holds while it works, and gives it back when it stops. A process
killed with ``kill -9`` renews nothing: its leases expire and another process takes the work over, with no restart.
That is how the real host shares work: the Durable Functions Azure Storage provider distributes instances with
blob leases and hands activity messages out from a queue with a visibility timeout
(learn.microsoft.com/azure/azure-functions/durable/durable-functions-azure-storage-provider; 5 minutes by default,
learn.microsoft.com/dotnet/api/microsoft.azure.webjobs.extensions.durabletask.azurestorageoptions
.workitemqueuevisibilitytimeout); a timer trigger holds a blob lease
(learn.microsoft.com/azure/azure-functions/functions-bindings-timer#scale-out).

``WRITEBACK_DEV_LEASE_SECONDS`` (default 10) is how long a lease lasts without renewal, so also how long work held by
a killed instance waits before another instance takes it over; holders renew every third of it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping

from devhost.periodic import DaemonLoop

logger = logging.getLogger("devhost.leases")

LEASE_SETTING = "WRITEBACK_DEV_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 10.0


def lease_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The lease duration from ``WRITEBACK_DEV_LEASE_SECONDS`` (a positive number of seconds)."""
    env = os.environ if environ is None else environ
    raw = env.get(LEASE_SETTING)
    if not raw:
        return DEFAULT_LEASE_SECONDS
    value = float(raw)
    if value <= 0:
        raise ValueError(f"{LEASE_SETTING} must be a positive number of seconds, not {raw!r}")
    return value


def new_owner_id() -> str:
    """An id naming this process for as long as it runs: a restarted process is a new owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseRenewer(DaemonLoop):
    """Calls ``renew`` every third of ``seconds`` on a daemon thread until ``stop``; an error is logged and retried."""

    kind = "renew"

    def __init__(self, name: str, seconds: float, renew: Callable[[], None]) -> None:
        super().__init__(name, max(0.01, seconds / 3))
        self._renew = renew

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._renew()
            except Exception as exc:
                logger.error("renewing the %s leases failed (%s)", self.name, type(exc).__name__)
