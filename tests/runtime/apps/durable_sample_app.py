"""A sample app for the local runtime's Durable conformance tests (not the product)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp()

# Activities record their calls in this file (one line per call) so tests can count executions across restarts.
CALLS_FILE = "DURABLE_SAMPLE_CALLS"


def _record(line: str) -> None:
    path = os.environ.get(CALLS_FILE)
    if path:
        with Path(path).open("a") as f:
            f.write(line + "\n")


@app.activity_trigger(input_name="name")
def say_hello(name: str) -> str:
    _record(f"say_hello:{name}")
    return f"Hello {name}!"


@app.activity_trigger(input_name="payload")
def flaky(payload: dict[str, Any]) -> str:
    """Fails until it has been called ``payload['fail']`` times for ``payload['key']``."""
    _record(f"flaky:{payload['key']}")
    path = os.environ.get(CALLS_FILE)
    calls = Path(path).read_text().count(f"flaky:{payload['key']}\n") if path else 1
    if calls <= payload["fail"]:
        raise RuntimeError(f"flaky failure {calls}")
    return f"ok after {calls}"


@app.activity_trigger(input_name="seconds")
def slow(seconds: float) -> float:
    import time

    _record(f"slow:start:{seconds}")
    time.sleep(seconds)
    _record(f"slow:end:{seconds}")
    return seconds


@app.orchestration_trigger(context_name="context")
def hello_sequence(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    names = context.get_input() or ["Tokyo", "Seattle", "London"]
    results = []
    for i, name in enumerate(names):
        context.set_custom_status({"step": i})
        results.append((yield context.call_activity(say_hello, name)))
    return results


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    names = context.get_input()
    return (yield context.task_all([context.call_activity(say_hello, n) for n in names]))


@app.orchestration_trigger(context_name="context")
def with_retry(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    spec = context.get_input()
    options = df.RetryOptions(first_retry_interval_in_milliseconds=50, max_number_of_attempts=spec["attempts"])
    try:
        result = yield context.call_activity_with_retry(flaky, options, spec)
    except Exception as exc:
        return {"failed": str(exc).splitlines()[0]}
    after = yield context.call_activity(say_hello, "after")
    return {"result": result, "after": after}


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    """Waits for an 'approve' event, racing a deadline timer."""
    seconds = context.get_input()
    deadline = context.current_utc_datetime + timedelta(seconds=seconds)
    timer = context.create_timer(deadline)
    decision = context.wait_for_external_event("approve")
    winner = yield context.task_any([decision, timer])
    if winner == decision:
        timer.cancel()
        return {"decision": decision.result}
    return {"decision": "expired"}


@app.orchestration_trigger(context_name="context")
def timer_only(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    seconds = context.get_input()
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=seconds))
    return "fired"


@app.orchestration_trigger(context_name="context")
def long_timer(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    """A 10-day timer: the SDK splits it into intervals; the test moves the clock."""
    yield context.create_timer(context.current_utc_datetime + timedelta(days=10))
    return "fired"


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    child = yield context.call_sub_orchestrator("hello_sequence", ["a", "b"])
    try:
        yield context.call_sub_orchestrator("failing", None)
    except Exception as exc:
        return {"child": child, "failure": str(exc).splitlines()[0]}
    return {"child": child}


@app.orchestration_trigger(context_name="context")
def failing(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    yield context.call_activity(say_hello, "before failure")
    raise ValueError("orchestrator exploded")


@app.orchestration_trigger(context_name="context")
def counter(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    n = context.get_input()
    yield context.call_activity(say_hello, f"n={n}")
    if n < 3:
        context.continue_as_new(n + 1)
        return None
    return n


@app.orchestration_trigger(context_name="context")
def wobbly(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    """Non-deterministic on purpose: the activity it calls first depends on an environment variable."""
    first = os.environ.get("WOBBLY_FIRST", "say_hello")
    yield context.call_activity(first, "x")
    yield context.wait_for_external_event("go")
    return "done"


@app.orchestration_trigger(context_name="context")
def slow_then_hello(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    seconds = context.get_input()
    yield context.call_activity(slow, seconds)
    return (yield context.call_activity(say_hello, "after slow"))


@app.route(route="start/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Starts any orchestrator of this app with the request body as input, like the Functions quickstart."""
    body = req.get_body()
    instance_id = await client.start_new(
        req.route_params["name"], req.params.get("id"), json.loads(body) if body else None
    )
    return client.create_check_status_response(req, instance_id)


@app.route(route="status/{id}", methods=["GET"])
@app.durable_client_input(client_name="client")
async def http_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    status = await client.get_status(req.route_params["id"])
    if not status:
        return func.HttpResponse(status_code=404)
    return func.HttpResponse(json.dumps(status.to_json()), mimetype="application/json")


@app.route(route="events/{id}/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_raise(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    await client.raise_event(req.route_params["id"], req.route_params["name"], req.get_json())
    return func.HttpResponse(status_code=202)
