"""Each caller's intake rate limit for the whole deployment, kept in Table Storage (one entity per caller).

Azure runs the app on many instances, and a limit kept in each process's memory would let a caller send N times its
rate to N instances. So every instance decides from the caller's entity (PartitionKey = a hash of the caller's key,
which may hold characters Table keys refuse) and moves it only with a conditional write (``If-Match``): a 412 means
another instance admitted a request first, so this one reads again and decides again.

Cost per admitted request: one conditional write when this instance's copy is current (it keeps the entity it last
wrote or read, with its ETag, per caller); a read and a second write when another instance moved it first; a refusal
decided on the copy costs nothing (the TAT only moves forward, see ``shared.core.rate_limits``). These round trips
are the limiter's own, apart from a change's.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from azure.data.tables import TableClient, TableServiceClient

from shared.adapters.table_maintenance import ensure_table, entity_or_none, write_if_unchanged
from shared.core.errors import RetryableError
from shared.core.rate_limits import Gcra

LIMIT_ROW = "intake"
MAX_ATTEMPTS = 20
CACHED_CALLERS = 4096


def caller_partition(caller_key: str) -> str:
    return hashlib.sha256(caller_key.encode("utf-8")).hexdigest()[:40]


class TableIntakeLimiter:
    def __init__(
        self,
        service: TableServiceClient,
        limit: Gcra,
        *,
        prefix: str = "writeback",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table: TableClient = service.get_table_client(f"{prefix}intakelimits")
        self.limit = limit
        self._clock = clock
        self._copies: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def ensure_tables(self) -> None:
        ensure_table(self.table)

    def admit(self, caller_key: str) -> None:
        partition = caller_partition(caller_key)
        with self._lock:
            copy = self._copies.get(partition)
        for _ in range(MAX_ATTEMPTS):
            if copy is None:
                copy = self._read(partition)
            tat, etag = copy
            moved = self.limit.admit(tat, self._clock())  # RateLimitedError: refused on the copy, nothing written
            written = self._write(partition, moved, etag)
            if written is not None:
                self._remember(partition, (moved, written))
                return
            copy = None  # another instance moved it first
        raise RetryableError(detail="the caller's rate limit is too contended", retry_after=1.0)

    def _remember(self, partition: str, copy: tuple[float, str | None]) -> None:
        with self._lock:
            self._copies[partition] = copy
            self._copies.move_to_end(partition)
            while len(self._copies) > CACHED_CALLERS:
                self._copies.popitem(last=False)

    def _read(self, partition: str) -> tuple[float, str | None]:
        entity = entity_or_none(self.table, partition, LIMIT_ROW)
        if entity is None:
            return 0.0, None
        copy = (float(entity.get("Tat") or 0.0), entity.metadata.get("etag"))
        self._remember(partition, copy)
        return copy

    def _write(self, partition: str, tat: float, etag: str | None) -> str | None:
        return write_if_unchanged(self.table, {"PartitionKey": partition, "RowKey": LIMIT_ROW, "Tat": tat}, etag)
