"""Health for probes and operators.

``GET /api/v1/health`` (readiness): 200 when every dependency is ready, 503 otherwise, with each dependency's state.
``GET /api/v1/health/live`` (liveness): 200 whenever the app answers at all; it touches no dependency, so a probe
that restarts unhealthy instances does not restart them for an outage of Storage or the EHR.
"""

from __future__ import annotations

import json

import azure.durable_functions as df
import azure.functions as func

from shared import bootstrap
from shared.api.health import check_health

bp = df.Blueprint()

_ALIVE = json.dumps({"status": "alive"})


@bp.route(route="api/v1/health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    ready, body = check_health(bootstrap.gateway().health_probes)
    return func.HttpResponse(json.dumps(body), status_code=200 if ready else 503, mimetype="application/json")


@bp.route(route="api/v1/health/live", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def liveness(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(_ALIVE, status_code=200, mimetype="application/json")
