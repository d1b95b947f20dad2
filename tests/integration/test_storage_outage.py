"""Storage that stops answering: a paused Azurite (SIGSTOP) or a port nobody listens on, seen through the app's
own HTTP functions and activities, called as the host calls them.

What a caller must see: ``503`` problem+json of type ``storage-unavailable`` with ``Retry-After``, soon (the storage
clients' timeouts and retries are settings, kept short here) — never a bare ``500``, and never a request held for
the SDK's default 300 s read timeout. An activity raises the retryable ``StorageUnavailableError`` (the
orchestration retries it), not a permanent failure. When storage answers again, so does the gateway.

The Azurite here is this module's own, so pausing it stops no other test's storage.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest

from devhost.durable.client_api import client_binding_json
from shared import bootstrap
from shared.api.caller_identity import encode_easyauth_principal
from shared.core.errors import StorageUnavailableError
from tools.services.azurite import Azurite, paused, start_azurite
from tools.services.process import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROBLEM_TYPE = "urn:writeback:problem:storage-unavailable"
# The durable client binding of the decision functions; nothing is woken while storage is down.
DURABLE_CLIENT = client_binding_json(f"http://127.0.0.1:{free_port()}", "OutageHub")
# One attempt and one retry of at most 1 s each (plus the SDK's backoff): an answer well inside this bound.
ANSWER_WITHIN_SECONDS = 12.0
SHORT_LIMITS = {
    "WRITEBACK_STORAGE_CONNECT_TIMEOUT_SECONDS": "1",
    "WRITEBACK_STORAGE_READ_TIMEOUT_SECONDS": "1",
    "WRITEBACK_STORAGE_RETRIES": "1",
}


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    service = start_azurite(log_dir=tmp_path_factory.mktemp("outage-logs"))
    yield service
    os.killpg(service.process.pid, signal.SIGCONT)  # never leave it stopped, whatever a test did
    service.stop()


# The invocation context the worker passes; locally there is no host span (trace_context None).
NO_HOST = SimpleNamespace(trace_context=None)


@pytest.fixture(scope="module")
def app_functions() -> dict[str, Any]:
    import function_app

    function_app.app.functions_bindings = None
    return {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}


@pytest.fixture
def gateway_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Point the process's gateway at a storage connection string, with short storage limits."""

    def use(connection_string: str) -> None:
        monkeypatch.setenv("WRITEBACK_STORAGE_CONNECTION_STRING", connection_string)
        monkeypatch.setenv("WRITEBACK_TABLE_PREFIX", "out" + uuid.uuid4().hex[:8])
        monkeypatch.setenv("WRITEBACK_TARGETS_FILE", str(REPO / "config" / "targets.yaml"))
        monkeypatch.setenv("WRITEBACK_POLICY_FILE", str(REPO / "config" / "policy.yaml"))
        monkeypatch.setenv("WRITEBACK_LOCAL_RUNTIME_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
        for name, value in SHORT_LIMITS.items():
            monkeypatch.setenv(name, value)
        bootstrap.reset()

    yield use
    bootstrap.reset()


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result, failing the test if it takes longer than ``seconds`` (it may go on in the background)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            result = call()
            outcome["result"] = asyncio.run(result) if inspect.isawaitable(result) else result
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"no answer within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def headers(roles: list[str] | None = None) -> dict[str, str]:
    principal = encode_easyauth_principal("crm", roles or ["Writeback.Submit"], user_id="user-1", name="Test User")
    return {"X-MS-CLIENT-PRINCIPAL": principal, "Content-Type": "application/json"}


def change_body() -> dict[str, Any]:
    return {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/outage-1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0100"}],
    }


def request(method: str, path: str, body: Any = None, *, route: dict[str, str] | None = None, **kw: Any) -> Any:
    data = b"" if body is None else json.dumps(body).encode()
    return func.HttpRequest(
        method, f"http://localhost{path}", headers=headers(**kw), body=data, route_params=route or {}, params={}
    )


def with_key(req: func.HttpRequest) -> func.HttpRequest:
    return func.HttpRequest(
        req.method,
        req.url,
        headers={**dict(req.headers.items()), "Idempotency-Key": uuid.uuid4().hex},
        body=req.get_body(),
        route_params=req.route_params,
        params=dict(req.params),
    )


def assert_storage_unavailable(resp: func.HttpResponse) -> None:
    body = json.loads(resp.get_body())
    assert resp.status_code == 503, body
    assert resp.mimetype == "application/problem+json"
    assert body["type"] == PROBLEM_TYPE and body["status"] == 503, body
    assert int(resp.headers["Retry-After"]) >= 1


# --- the HTTP API -------------------------------------------------------------------------------------------------


def calls(functions: dict[str, Any], change_id: str) -> dict[str, Callable[[], Any]]:
    """Every HTTP function that reads or writes storage, as the host would call it."""
    one = {"changeId": change_id}
    approver = ["Writeback.Approve"]
    return {
        "submit": lambda: functions["submit_change"](
            with_key(request("POST", "/api/v1/changes", change_body())), context=NO_HOST
        ),
        "status": lambda: functions["get_change"](request("GET", f"/api/v1/changes/{change_id}", route=one)),
        "lineage": lambda: functions["get_change_lineage"](
            request("GET", f"/api/v1/changes/{change_id}/lineage", route=one)
        ),
        "queue": lambda: functions["list_changes"](request("GET", "/api/v1/changes", roles=approver)),
        "approve": lambda: functions["decide_approval"](
            request(
                "POST", f"/api/v1/changes/{change_id}/approval", {"decision": "approve"}, route=one, roles=approver
            ),
            client=DURABLE_CLIENT,
        ),
        "cancel": lambda: functions["cancel_change"](
            request("POST", f"/api/v1/changes/{change_id}/cancel", route=one), client=DURABLE_CLIENT
        ),
        "retry": lambda: functions["retry_change"](
            request("POST", f"/api/v1/changes/{change_id}/retry", route=one, roles=["Writeback.Operate"])
        ),
    }


def test_a_paused_storage_answers_503_with_retry_after_on_every_endpoint_then_recovers(
    own_azurite: Azurite, app_functions: dict[str, Any], gateway_env: Callable[[str], None]
) -> None:
    gateway_env(own_azurite.connection_string)
    accepted = within(
        30,
        lambda: app_functions["submit_change"](
            with_key(request("POST", "/api/v1/changes", change_body())), context=NO_HOST
        ),
    )
    assert accepted.status_code == 202, accepted.get_body()
    change_id = json.loads(accepted.get_body())["changeId"]

    with paused(own_azurite):
        for name, call in calls(app_functions, change_id).items():
            started = time.monotonic()
            resp = within(ANSWER_WITHIN_SECONDS, call)
            resp = resp[0] if isinstance(resp, tuple) else resp
            assert_storage_unavailable(resp)
            print(f"{name}: 503 after {time.monotonic() - started:.2f} s")

    status = within(30, calls(app_functions, change_id)["status"])
    assert status.status_code in (200, 202), status.get_body()
    assert json.loads(status.get_body())["changeId"] == change_id


def test_a_new_instance_with_storage_paused_answers_503_not_500(
    own_azurite: Azurite, app_functions: dict[str, Any], gateway_env: Callable[[str], None]
) -> None:
    gateway_env(own_azurite.connection_string)  # a fresh gateway: its tables are made on first use
    with paused(own_azurite):
        assert_storage_unavailable(within(ANSWER_WITHIN_SECONDS, calls(app_functions, "0" * 36)["submit"]))
        assert_storage_unavailable(within(ANSWER_WITHIN_SECONDS, calls(app_functions, "0" * 36)["status"]))
    assert within(30, calls(app_functions, "0" * 36)["submit"]).status_code == 202


def test_storage_refusing_connections_answers_503(
    app_functions: dict[str, Any], gateway_env: Callable[[str], None]
) -> None:
    nobody = free_port()
    gateway_env(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint=http://127.0.0.1:{nobody}/devstoreaccount1;"
        f"TableEndpoint=http://127.0.0.1:{nobody}/devstoreaccount1;"
    )
    for name in ("submit", "status"):
        assert_storage_unavailable(within(ANSWER_WITHIN_SECONDS, calls(app_functions, "0" * 36)[name]))


def test_health_answers_503_naming_storage_while_paused(
    own_azurite: Azurite, app_functions: dict[str, Any], gateway_env: Callable[[str], None]
) -> None:
    gateway_env(own_azurite.connection_string)
    health = lambda: app_functions["health"](func.HttpRequest("GET", "http://localhost/api/v1/health", body=b""))  # noqa: E731
    assert within(30, health).status_code == 200
    with paused(own_azurite):
        resp = within(ANSWER_WITHIN_SECONDS, health)
    body = json.loads(resp.get_body())
    assert resp.status_code == 503, body
    assert body["dependencies"]["tableStorage"]["state"] == "unavailable"
    # each probe is either translated (storage-unavailable) or cut off by the probes' 5 s deadline (timeout)
    assert body["dependencies"]["blobStorage"]["state"] == "unavailable"
    assert body["dependencies"]["blobStorage"]["reason"] in ("storage-unavailable", "timeout")


# --- activities ---------------------------------------------------------------------------------------------------


def call_activity(function: Callable[..., Any], payload: dict[str, Any]) -> Any:
    """As the worker calls it: with the invocation context when the activity takes one."""
    if "context" in inspect.signature(function).parameters:
        return function(payload, context=NO_HOST)
    return function(payload)


def test_an_activity_raises_the_retryable_storage_error(
    own_azurite: Azurite, app_functions: dict[str, Any], gateway_env: Callable[[str], None]
) -> None:
    gateway_env(own_azurite.connection_string)
    accepted = within(30, calls(app_functions, "")["submit"])
    change_id = json.loads(accepted.get_body())["changeId"]
    for activity in ("prepare_change", "write_change", "fail_change"):
        payload = {"changeId": change_id, "attempt": 0, "detail": "x"}
        with paused(own_azurite), pytest.raises(StorageUnavailableError) as raised:
            within(ANSWER_WITHIN_SECONDS, lambda a=activity, p=payload: call_activity(app_functions[a], p))
        assert raised.value.retry_after is not None, activity
