"""Readiness: each dependency's state, for ``GET /api/v1/health``. Never raises; never reveals secrets.

A probe is a callable that raises when its dependency is not ready, or returns a report (a mapping with ``state``)
of its parts. A configuration error's message is shown (it names files, fields, sources and targets; the files hold
no secrets) and logged once per process, so an operator finds it without the logs. The targets report each target:
one that is not configured, or on a loopback address while the app runs in Azure, is not ready, with the reason.

The probes run side by side and the answer waits at most ``PROBE_SECONDS`` for them: a dependency that has not
answered by then is ``unavailable`` with reason ``timeout``. A storage outage otherwise held the probe for the storage
clients' whole timeout-and-retry budget, one probe after another (70 s measured with the default limits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from shared.core.errors import ConfigurationError, WritebackError
from shared.core.policy import Policy
from shared.core.targets import TargetRegistry

log = logging.getLogger("writeback.health")
_logged: set[str] = set()

PROBE_SECONDS = 5.0
# Bounded: probes stuck on a dependency that does not answer hold at most these threads, each until its own timeout.
_probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-probe")


def _probe(name: str, check: Callable[[], Any]) -> dict[str, Any]:
    try:
        report = check()
    except ConfigurationError as exc:
        if str(exc) not in _logged:
            _logged.add(str(exc))
            log.error("not ready: %s: %s", name, exc)
        return {"state": "unavailable", "reason": exc.code, "detail": str(exc)}
    except WritebackError as exc:
        return {"state": "unavailable", "reason": exc.code}
    except Exception as exc:
        return {"state": "unavailable", "reason": type(exc).__name__}
    if isinstance(report, Mapping) and "state" in report:
        return dict(report)
    return {"state": "ok"}


def check_health(
    probes: Mapping[str, Callable[[], Any]], *, within: float = PROBE_SECONDS
) -> tuple[bool, dict[str, Any]]:
    """Run each named probe (a callable that raises when its dependency is not ready, or returns its report), for
    ``within`` s at most."""
    running = {name: _probes.submit(_probe, name, check) for name, check in probes.items()}
    deadline = time.monotonic() + within
    dependencies: dict[str, dict[str, Any]] = {}
    for name, future in running.items():
        try:
            dependencies[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            dependencies[name] = {"state": "unavailable", "reason": "timeout"}
    ready = all(d["state"] == "ok" for d in dependencies.values())
    return ready, {"status": "ok" if ready else "degraded", "dependencies": dependencies}


def targets_readiness(registry: TargetRegistry) -> dict[str, Any]:
    """Each target's state: ``unavailable`` with ``not-configured`` or ``loopback-in-azure`` and why."""
    targets: dict[str, dict[str, str]] = {}
    for target_id in registry.ids():
        problem = registry.problem(target_id)
        targets[target_id] = (
            {"state": "ok"}
            if problem is None
            else {"state": "unavailable", "reason": problem.code, "detail": problem.detail}
        )
    if all(t["state"] == "ok" for t in targets.values()):
        return {"state": "ok", "targets": targets}
    return {"state": "unavailable", "reason": "target-not-ready", "targets": targets}


def policy_readiness(policy: Policy) -> dict[str, Any]:
    """Ready once loaded (and agreeing with the targets); names the sources no app acts as yet, which is no fault."""
    without = policy.sources_without_app_ids
    return {"state": "ok", "sourcesWithoutAppIds": without} if without else {"state": "ok"}
