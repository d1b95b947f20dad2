"""Readiness: each dependency's state, for ``GET /api/v1/health``. Never raises; never reveals secrets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.core.errors import WritebackError


def _probe(check: Callable[[], Any]) -> dict[str, str]:
    try:
        check()
    except WritebackError as exc:
        return {"state": "unavailable", "reason": exc.code}
    except Exception as exc:
        return {"state": "unavailable", "reason": type(exc).__name__}
    return {"state": "ok"}


def check_health(probes: Mapping[str, Callable[[], Any]]) -> tuple[bool, dict[str, Any]]:
    """Run each named probe (a callable that raises when its dependency is not ready)."""
    dependencies = {name: _probe(check) for name, check in probes.items()}
    ready = all(d["state"] == "ok" for d in dependencies.values())
    return ready, {"status": "ok" if ready else "degraded", "dependencies": dependencies}
