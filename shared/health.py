"""Readiness: each dependency's state, for ``GET /api/v1/health``. Never raises; never reveals secrets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared import bootstrap
from shared.errors import WritebackError


def _probe(check: Callable[[], Any]) -> dict[str, str]:
    try:
        check()
    except WritebackError as exc:
        return {"state": "unavailable", "reason": exc.code}
    except Exception as exc:
        return {"state": "unavailable", "reason": type(exc).__name__}
    return {"state": "ok"}


def check_health() -> tuple[bool, dict[str, Any]]:
    dependencies = {
        "targets": _probe(bootstrap.targets),
        "policy": _probe(bootstrap.policy),
        "tableStorage": _probe(lambda: next(iter(bootstrap.table_service().list_tables(results_per_page=1)), None)),
        "blobStorage": _probe(bootstrap.payload_store),
    }
    ready = all(d["state"] == "ok" for d in dependencies.values())
    return ready, {"status": "ok" if ready else "degraded", "dependencies": dependencies}
