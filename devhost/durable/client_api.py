"""The Durable Functions HTTP API the SDK's ``DurableOrchestrationClient`` calls, served by the local runtime.

Paths and status codes follow the Durable Functions extension's HTTP API under
``/runtime/webhooks/durabletask/``: start, status, query, raise event, terminate, purge. Suspend, resume, rewind and
restart answer 501: the local runtime does not emulate them.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from devhost.durable.engine import (
    DurableEngine,
    InstanceExistsError,
    InstanceGoneError,
    InstanceNotFoundError,
    UnknownFunctionError,
)

WEBHOOK_PATH = "/runtime/webhooks/durabletask"
INSTANCE_PLACEHOLDER = "INSTANCEID"

STATUS_CODES = {"Completed": 200, "Failed": 500, "Terminated": 400, "Canceled": 400}


def client_binding_json(base_url: str, task_hub: str) -> str:
    """The JSON string a durable client binding receives, with URLs on ``base_url`` (scheme://host:port)."""
    hook = f"{base_url.rstrip('/')}{WEBHOOK_PATH}"
    query = f"taskHub={quote(task_hub)}&connection=Storage"
    instance = f"{hook}/instances/{INSTANCE_PLACEHOLDER}"
    return json.dumps(
        {
            "taskHubName": task_hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{hook}/orchestrators/{{functionName}}[/{{instanceId}}]?{query}",
                "createAndWaitOnNewInstancePostUri": (
                    f"{hook}/orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}"
                    f"&pollingInterval={{intervalInSeconds}}&{query}"
                ),
            },
            "managementUrls": {
                "id": INSTANCE_PLACEHOLDER,
                "statusQueryGetUri": f"{instance}?{query}",
                "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}?{query}",
                "terminatePostUri": f"{instance}/terminate?reason={{text}}&{query}",
                "rewindPostUri": f"{instance}/rewind?reason={{text}}&{query}",
                "purgeHistoryDeleteUri": f"{instance}?{query}",
                "restartPostUri": f"{instance}/restart?{query}",
                "suspendPostUri": f"{instance}/suspend?reason={{text}}&{query}",
                "resumePostUri": f"{instance}/resume?reason={{text}}&{query}",
            },
            "baseUrl": hook,
            "requiredQueryStringParameters": query,
            "rpcBaseUrl": f"{hook}/",
        }
    )


def _flag(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.lower() == "true"


def _statuses(request: Request) -> list[str] | None:
    raw = request.query_params.get("runtimeStatus")
    return [s.strip() for s in raw.split(",") if s.strip()] if raw else None


async def _body_text(request: Request) -> str | None:
    """The payload as JSON text. The SDK client posts ``json=df_dumps(value)``: a JSON string holding JSON."""
    body = await request.body()
    if not body:
        return None
    value = json.loads(body)
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return json.dumps(value)
        return value
    return json.dumps(value)


def durable_routes(engine: DurableEngine) -> list[BaseRoute]:
    def management_payload(request: Request, instance_id: str) -> dict[str, Any]:
        base = f"{request.url.scheme}://{request.url.netloc}"
        urls: dict[str, str] = json.loads(client_binding_json(base, engine.task_hub))["managementUrls"]
        return {k: v.replace(INSTANCE_PLACEHOLDER, instance_id) for k, v in urls.items()}

    async def start(request: Request) -> Response:
        name = request.path_params["function_name"]
        instance_id = request.path_params.get("instance_id")
        try:
            iid = engine.start_instance(name, instance_id, await _body_text(request))
        except UnknownFunctionError as exc:
            return JSONResponse(
                {"Message": "One or more of the arguments submitted is incorrect", "ExceptionMessage": str(exc)}, 400
            )
        except InstanceExistsError as exc:
            return JSONResponse({"Message": str(exc), "ExceptionMessage": str(exc)}, 409)
        payload = management_payload(request, iid)
        return JSONResponse(payload, 202, headers={"Location": payload["statusQueryGetUri"]})

    async def get_status(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        body = engine.status(
            instance_id,
            show_history=_flag(request, "showHistory"),
            show_history_output=_flag(request, "showHistoryOutput"),
            show_input=_flag(request, "showInput", default=True),
        )
        if body is None:
            return Response(status_code=404)
        code = STATUS_CODES.get(body["runtimeStatus"], 202)
        headers = {}
        if code == 202:
            headers = {"Location": str(request.url), "Retry-After": "1"}
        return JSONResponse(body, code, headers=headers)

    async def query(request: Request) -> Response:
        q = request.query_params
        rows = engine.query(
            _statuses(request),
            q.get("createdTimeFrom"),
            q.get("createdTimeTo"),
            q.get("instanceIdPrefix"),
            show_input=_flag(request, "showInput"),
        )
        return JSONResponse(rows, 200)

    async def raise_event(request: Request) -> Response:
        try:
            engine.raise_event(
                request.path_params["instance_id"], request.path_params["event_name"], await _body_text(request)
            )
        except InstanceNotFoundError:
            return Response(status_code=404)
        except InstanceGoneError:
            return Response(status_code=410)
        return Response(status_code=202)

    async def terminate(request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        status = engine.status(instance_id, show_input=False)
        if status is None:
            return Response(status_code=404)
        if status["runtimeStatus"] in STATUS_CODES:
            return Response(status_code=410)
        engine.terminate(instance_id, request.query_params.get("reason", ""))
        return Response(status_code=202)

    async def purge(request: Request) -> Response:
        deleted = engine.purge(request.path_params["instance_id"])
        if not deleted:
            return Response(status_code=404)
        return JSONResponse({"instancesDeleted": deleted}, 200)

    async def purge_many(request: Request) -> Response:
        q = request.query_params
        deleted = engine.purge_where(_statuses(request), q.get("createdTimeFrom"), q.get("createdTimeTo"))
        if not deleted:
            return Response(status_code=404)
        return JSONResponse({"instancesDeleted": deleted}, 200)

    async def not_emulated(request: Request) -> Response:
        return JSONResponse({"Message": "not emulated by the local runtime"}, 501)

    hook = WEBHOOK_PATH
    return [
        Route(f"{hook}/orchestrators/{{function_name}}", start, methods=["POST"]),
        Route(f"{hook}/orchestrators/{{function_name}}/{{instance_id}}", start, methods=["POST"]),
        Route(f"{hook}/instances", query, methods=["GET"]),
        Route(f"{hook}/instances/", query, methods=["GET"]),
        Route(f"{hook}/instances", purge_many, methods=["DELETE"]),
        Route(f"{hook}/instances/", purge_many, methods=["DELETE"]),
        Route(f"{hook}/instances/{{instance_id}}", get_status, methods=["GET"]),
        Route(f"{hook}/instances/{{instance_id}}", purge, methods=["DELETE"]),
        Route(f"{hook}/instances/{{instance_id}}/raiseEvent/{{event_name}}", raise_event, methods=["POST"]),
        Route(f"{hook}/instances/{{instance_id}}/terminate", terminate, methods=["POST"]),
        Route(f"{hook}/instances/{{instance_id}}/{{op:str}}", not_emulated, methods=["POST"]),
    ]
