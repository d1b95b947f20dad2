"""Hold an HTTP answer until a change settles (``Prefer: wait``), from storage, on whichever instance serves it.

No in-process signal is assumed: in Azure the orchestration of a change runs on any instance, so the waiter reads
the stored record, quickly at first and then less often, until the change has ended or waits for a person, or the
time is up. When this process itself records the change settled, a hint (``SettleSignals``) wakes the waiter before
its next scheduled read — it still reads storage to answer. It sleeps with ``asyncio`` between reads (an HTTP
function that awaits it holds no worker thread while it waits); each read runs in a thread, since the Table client
is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from shared.app.settle_signals import SettleSignals
from shared.core.models import ChangeRecord, ChangeStatus

FIRST_POLL_SECONDS = 0.01
# Each read comes twice as late as the one before (reads at 10, 30, 70, 150, 310, 630 ms, then every second): a
# change settled by another instance is answered at most about half late (its status reads cost CPU and a round trip
# each); one settled in this process, at once.
POLL_GROWTH = 2.0
MAX_POLL_SECONDS = 1.0


def settled(record: ChangeRecord) -> bool:
    """Nothing more happens without a person: the change has ended, or it waits for an approver."""
    return record.status.is_terminal or record.status is ChangeStatus.AWAITING_APPROVAL


class ChangeWaiter:
    def __init__(
        self,
        read: Callable[[str], ChangeRecord | None],
        *,
        signals: SettleSignals | None = None,
        first_poll: float = FIRST_POLL_SECONDS,
        max_poll: float = MAX_POLL_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._signals = signals
        self._first_poll = first_poll
        self._max_poll = max_poll
        self._sleep = sleep
        self._monotonic = monotonic

    async def until_settled(self, change_id: str, seconds: float) -> ChangeRecord | None:
        """The change once settled, or None when ``seconds`` pass first (or it cannot be read)."""
        deadline = self._monotonic() + seconds
        delay = self._first_poll
        hint = self._signals.listen(change_id) if self._signals is not None else None
        try:
            while True:
                left = deadline - self._monotonic()
                if left <= 0:
                    return None
                await self._pause(min(delay, left), hint)
                delay = min(delay * POLL_GROWTH, self._max_poll)
                record = await asyncio.to_thread(self._read, change_id)
                if record is not None and settled(record):
                    return record
                if hint is not None and hint.is_set():
                    assert self._signals is not None
                    self._signals.forget(change_id, hint)
                    hint = self._signals.listen(change_id)
        finally:
            if hint is not None and self._signals is not None:
                self._signals.forget(change_id, hint)

    async def _pause(self, seconds: float, hint: asyncio.Event | None) -> None:
        if hint is None:
            await self._sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hint.wait(), seconds)
