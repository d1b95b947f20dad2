"""``GET /api/v1/health``: 200 when every dependency is ready, 503 otherwise, with each dependency's state."""

from __future__ import annotations

import json

import azure.durable_functions as df
import azure.functions as func

from shared.health import check_health

bp = df.Blueprint()


@bp.route(route="api/v1/health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    ready, body = check_health()
    return func.HttpResponse(json.dumps(body), status_code=200 if ready else 503, mimetype="application/json")
