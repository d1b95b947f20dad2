"""A v2-model sample app for the devhost HTTP tests: routes, constraints, bodies, headers, failures, a durable client.

Function names are chosen so that the host's order (by function name) and ASP.NET precedence disagree for
``v1/changes/summary`` vs ``v1/changes/{id}``.
"""

# The Functions decorators are untyped (as for function_app.py in pyproject.toml); the functions they wrap are typed.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import asyncio
import json
import threading
import time

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


def _echo_payload(req: func.HttpRequest, function: str) -> func.HttpResponse:
    payload = {
        "function": function,
        "method": req.method,
        "url": req.url,
        "headers": dict(req.headers),
        "params": dict(req.params),
        "route_params": dict(req.route_params),
        "body_hex": req.get_body().hex(),
        "thread": threading.current_thread().name,
    }
    return func.HttpResponse(json.dumps(payload), mimetype="application/json")


@app.route(route="echo/{*rest}")
def echo(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "echo")


# "a_change_by_id" sorts before "change_summary": the Functions host would try this route first.
@app.route(route="v1/changes/{id}", methods=["GET", "DELETE"])
def a_change_by_id(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "a_change_by_id")


@app.route(route="v1/changes/summary", methods=["GET"])
def change_summary(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "change_summary")


@app.route(route="items/{id:int}", methods=["GET"])
def item_by_int(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "item_by_int")


@app.route(route="items/{id:guid}", methods=["GET"])
def item_by_guid(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "item_by_guid")


@app.route(route="items/{name:alpha}", methods=["GET"])
def item_by_alpha(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "item_by_alpha")


@app.route(route="codes/{code:regex(^[A-Z]{{3}}-\\d+$)}", methods=["GET"])
def code_by_regex(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "code_by_regex")


@app.route(route="range/{n:int:range(1,10)}", methods=["GET"])
def bounded(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "bounded")


@app.route(route="opt/{id?}", methods=["GET"])
def optional_param(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "optional_param")


@app.route(route="files/{*path}", methods=["GET"])
def catch_all(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "catch_all")


@app.route(route="post-only", methods=["POST"])
def post_only(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "post_only")


@app.route(methods=["GET"])
def default_route(req: func.HttpRequest) -> func.HttpResponse:
    return _echo_payload(req, "default_route")


@app.route(route="binary", methods=["GET"])
def binary(req: func.HttpRequest) -> func.HttpResponse:
    resp = func.HttpResponse(bytes(range(256)), mimetype="application/octet-stream")
    resp.headers.add_header("Set-Cookie", "a=1; Path=/; HttpOnly")
    resp.headers.add_header("Set-Cookie", "b=2; Path=/")
    resp.headers.add_header("Link", "</p/1>; rel=first")
    resp.headers.add_header("Link", "</p/2>; rel=next")
    resp.headers["X-Single"] = "one"
    return resp


@app.route(route="text", methods=["GET"])
def text(req: func.HttpRequest) -> str:
    return "plain text ü"


@app.route(route="html", methods=["GET"])
def html(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("<p>hi</p>", status_code=201, mimetype="text/html", charset="utf-8")


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("patient 12345 has secret diagnosis")


@app.route(route="returns-none", methods=["GET"])
def returns_none(req: func.HttpRequest) -> func.HttpResponse:
    return None  # type: ignore[return-value]


@app.route(route="async-echo", methods=["POST"])
async def async_echo(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return _echo_payload(req, "async_echo")


@app.route(route="slow", methods=["GET"])
def slow(req: func.HttpRequest) -> func.HttpResponse:
    time.sleep(0.3)
    return func.HttpResponse("done")


@app.route(route="orchestrations/start", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start_orchestration(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    response: func.HttpResponse = client.create_check_status_response(req, "some-id")
    return response
