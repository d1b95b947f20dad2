"""HTTP functions for operators and approvers: retry a change, resolve a conflict, replay many (``/api/v1``)."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from orchestrators.http_adapter import base_url_of, headers_of, to_http_response
from shared import bootstrap

bp = df.Blueprint()


@bp.route(route="api/v1/changes/replay", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def replay_changes(req: func.HttpRequest) -> func.HttpResponse:
    return to_http_response(
        bootstrap.gateway().operations_api.replay(headers_of(req), req.get_body(), base_url_of(req))
    )


@bp.route(route="api/v1/changes/{changeId}/retry", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def retry_change(req: func.HttpRequest) -> func.HttpResponse:
    api = bootstrap.gateway().operations_api
    return to_http_response(api.retry(headers_of(req), req.route_params["changeId"], req.get_body(), base_url_of(req)))


@bp.route(route="api/v1/changes/{changeId}/resolve", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def resolve_conflict(req: func.HttpRequest) -> func.HttpResponse:
    api = bootstrap.gateway().operations_api
    return to_http_response(
        api.resolve(headers_of(req), req.route_params["changeId"], req.get_body(), base_url_of(req))
    )
