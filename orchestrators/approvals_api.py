"""HTTP functions for decisions on a change: approve / reject, cancel, and the signed approval callback.

Each records the decision through the core, then wakes the change's orchestration with an ``approval`` event.
"""

from __future__ import annotations

import asyncio
import logging

import azure.durable_functions as df
import azure.functions as func

from orchestrators.http_adapter import base_url_of, headers_of, to_http_response
from orchestrators.writeback_orchestrator import APPROVAL_EVENT
from shared import bootstrap

bp = df.Blueprint()
log = logging.getLogger("writeback.approvals")


async def _wake(client: df.DurableOrchestrationClient, wake: dict[str, str] | None) -> None:
    if wake is None:
        return
    try:
        await client.raise_event(wake["changeId"], APPROVAL_EVENT, wake)
    except Exception as exc:
        # The record holds the decision; an orchestration that is gone or not started has nothing to wake.
        log.warning("change %s: could not wake the orchestration (%s)", wake["changeId"], type(exc).__name__)


@bp.route(route="api/v1/changes/{changeId}/approval", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
async def decide_approval(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api = bootstrap.gateway().approvals_api
    response, wake = await asyncio.to_thread(
        api.decide_approval, headers_of(req), req.route_params["changeId"], req.get_body(), base_url_of(req)
    )
    await _wake(client, wake)
    return to_http_response(response)


@bp.route(route="api/v1/changes/{changeId}/cancel", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
async def cancel_change(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api = bootstrap.gateway().approvals_api
    response, wake = await asyncio.to_thread(
        api.cancel, headers_of(req), req.route_params["changeId"], req.get_body(), base_url_of(req)
    )
    await _wake(client, wake)
    return to_http_response(response)


@bp.route(route="api/v1/callbacks/approval", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@bp.durable_client_input(client_name="client")
async def approval_callback(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    api = bootstrap.gateway().approvals_api
    response, wake = await asyncio.to_thread(api.approval_callback, headers_of(req), req.get_body(), base_url_of(req))
    await _wake(client, wake)
    return to_http_response(response)


@bp.route(route="api/v1/changes/{changeId}/approval/callback", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def moved_approval_callback(req: func.HttpRequest) -> func.HttpResponse:
    return to_http_response(bootstrap.gateway().approvals_api.moved_callback(req.route_params["changeId"]))
