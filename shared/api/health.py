"""Readiness: each dependency's state, for ``GET /api/v1/health``. Never raises; never reveals secrets.

The probes run side by side and the answer waits at most ``PROBE_SECONDS`` for them: a dependency that has not
answered by then is ``unavailable`` with reason ``timeout``. A storage outage otherwise held the probe for the storage
clients' whole timeout-and-retry budget, one probe after another (70 s measured with the default limits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from shared.core.errors import WritebackError

PROBE_SECONDS = 5.0
# Bounded: probes stuck on a dependency that does not answer hold at most these threads, each until its own timeout.
_probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-probe")


def _probe(check: Callable[[], Any]) -> dict[str, str]:
    try:
        check()
    except WritebackError as exc:
        return {"state": "unavailable", "reason": exc.code}
    except Exception as exc:
        return {"state": "unavailable", "reason": type(exc).__name__}
    return {"state": "ok"}


def check_health(
    probes: Mapping[str, Callable[[], Any]], *, within: float = PROBE_SECONDS
) -> tuple[bool, dict[str, Any]]:
    """Run each named probe (a callable that raises when its dependency is not ready), for ``within`` s at most."""
    running = {name: _probes.submit(_probe, check) for name, check in probes.items()}
    deadline = time.monotonic() + within
    dependencies: dict[str, dict[str, str]] = {}
    for name, future in running.items():
        try:
            dependencies[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            dependencies[name] = {"state": "unavailable", "reason": "timeout"}
    ready = all(d["state"] == "ok" for d in dependencies.values())
    return ready, {"status": "ok" if ready else "degraded", "dependencies": dependencies}
