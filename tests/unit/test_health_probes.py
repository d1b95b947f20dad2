"""Readiness answers in bounded time: a dependency that does not answer is reported, not waited for."""

from __future__ import annotations

import threading
import time

from shared.api.health import check_health
from shared.core.errors import StorageUnavailableError


def test_a_probe_that_does_not_answer_is_a_timeout_and_the_others_are_reported() -> None:
    release = threading.Event()

    def unavailable() -> None:
        raise StorageUnavailableError(retry_after=5)

    started = time.monotonic()
    try:
        ready, body = check_health(
            {"targets": lambda: None, "tableStorage": lambda: release.wait(30), "blobStorage": unavailable},
            within=0.3,
        )
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert not ready and body["status"] == "degraded"
    assert body["dependencies"] == {
        "targets": {"state": "ok"},
        "tableStorage": {"state": "unavailable", "reason": "timeout"},
        "blobStorage": {"state": "unavailable", "reason": "storage-unavailable"},
    }


def test_every_probe_answering_is_ready() -> None:
    assert check_health({"targets": lambda: None, "policy": lambda: None}) == (
        True,
        {"status": "ok", "dependencies": {"targets": {"state": "ok"}, "policy": {"state": "ok"}}},
    )
