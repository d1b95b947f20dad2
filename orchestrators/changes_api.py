"""HTTP functions of the change API (``/api/v1/changes...``, ``/api/v1/lineage/...``): parse, delegate, answer."""

from __future__ import annotations

import asyncio

import azure.durable_functions as df
import azure.functions as func

from orchestrators.http_adapter import base_url_of, headers_of, to_http_response
from shared import bootstrap
from shared.core.telemetry import host_trace

bp = df.Blueprint()


# Async, so that a caller holding its answer with `Prefer: wait=N` holds no worker thread while it waits.
@bp.route(route="api/v1/changes", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def submit_change(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    api = (await asyncio.to_thread(bootstrap.gateway)).changes_api
    with host_trace(context.trace_context):  # the intake's span is the host request span's child
        return to_http_response(await api.submit_and_wait(headers_of(req), req.get_body(), base_url_of(req)))


@bp.route(route="api/v1/changes", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def list_changes(req: func.HttpRequest) -> func.HttpResponse:
    api = bootstrap.gateway().changes_api
    return to_http_response(api.list_changes(headers_of(req), dict(req.params), base_url_of(req)))


@bp.route(route="api/v1/changes/{changeId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_change(req: func.HttpRequest) -> func.HttpResponse:
    api = (await asyncio.to_thread(bootstrap.gateway)).changes_api
    return to_http_response(
        await api.get_change_and_wait(headers_of(req), req.route_params["changeId"], base_url_of(req))
    )


@bp.route(route="api/v1/changes/{changeId}/lineage", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def get_change_lineage(req: func.HttpRequest) -> func.HttpResponse:
    api = bootstrap.gateway().changes_api
    return to_http_response(api.lineage(headers_of(req), req.route_params["changeId"]))


@bp.route(
    route="api/v1/lineage/{target}/{resourceType}/{resourceId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
def get_resource_lineage(req: func.HttpRequest) -> func.HttpResponse:
    api = bootstrap.gateway().changes_api
    p = req.route_params
    return to_http_response(
        api.resource_lineage(headers_of(req), p["target"], p["resourceType"], p["resourceId"], dict(req.params))
    )
