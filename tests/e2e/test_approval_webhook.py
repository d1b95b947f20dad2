"""Power Automate / Logic Apps approvals: the webhook notification, a reminder, and the signed callback tokens."""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tools.services.process import free_port

pytestmark = pytest.mark.e2e


class Catcher:
    """A stand-in for the flow's 'When an HTTP request is received' trigger."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                catcher.received.put(json.loads(self.rfile.read(length)))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/flow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, change_id: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            item = self.received.get(timeout=max(0.1, deadline - time.monotonic()))
            if item["changeId"] == change_id:
                return item


@pytest.fixture(scope="module")
def catcher() -> Iterator[Catcher]:
    c = Catcher()
    yield c
    c.server.shutdown()


@pytest.fixture(scope="module")
def flow_gateway(
    azurite: Any,
    token_endpoint: Any,
    fhir_server: Any,
    fhir_token: str,
    catcher: Catcher,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    key = base64.b64encode(os.urandom(32)).decode()
    gw = start_gateway(
        azurite,
        token_endpoint,
        fhir_server,
        fhir_token,
        tmp_path_factory.mktemp("flow"),
        WRITEBACK_APPROVAL_WEBHOOK_URL=catcher.url,
        WRITEBACK_APPROVAL_SIGNING_KEYS=f"k1:{key}",
        WRITEBACK_APPROVAL_TIMEOUT_HOURS=str(30 / 3600),
        WRITEBACK_APPROVAL_REMINDER_HOURS=str(2 / 3600),
    )
    yield gw
    stop_gateway(gw)


def name_change(patient: dict[str, Any]) -> dict[str, Any]:
    resource = {k: v for k, v in patient.items() if k != "meta"}
    resource["name"] = [{"family": "Flowed", "given": ["Pat"]}]
    return {"target": "local-ehr", "operation": "update", "resource": resource}


def test_notification_reminder_and_signed_approve_token(
    flow_gateway: Gateway, catcher: Catcher, patient: dict[str, Any]
) -> None:
    change_id = flow_gateway.submit(name_change(patient)).json()["changeId"]
    request = catcher.next(change_id)
    assert request["kind"] == "approval-requested"
    assert request["approvalPaths"] == ["Patient.name"]
    assert "Flowed" not in json.dumps(request)  # paths, not values
    reminder = catcher.next(change_id)
    assert reminder["kind"] == "approval-reminder"

    tampered = reminder["approveToken"][:-3] + ("AAA" if not reminder["approveToken"].endswith("AAA") else "BBB")
    assert decide(reminder, tampered, json={"approver": "x"}).status_code == 401
    resp = decide(reminder, reminder["approveToken"], json={"approver": "dana@example.org", "comment": "ok by phone"})
    assert resp.status_code == 202, resp.text
    done = flow_gateway.wait(change_id)
    assert done["status"] == "completed"
    assert done["approval"]["claimedBy"] == "dana@example.org" and done["approval"]["via"] == "callback"
    assert done["approval"]["decidedBy"] == "approval-link", "a name the flow gives is claimed, not verified"
    assert decide(reminder, reminder["approveToken"], json={}).status_code == 409  # single use
    assert decide(request, request["rejectToken"], json={}).status_code == 409  # the change no longer waits
    events = [e["event"] for e in flow_gateway.lineage(change_id)]
    assert events.count("approvers-notified") == 2 and "approved" in events


def decide(notification: dict[str, Any], token: str, **kw: Any) -> httpx.Response:
    """What a flow does: post the token it was given to the notification's callback URL, in the header."""
    return httpx.post(notification["callbackUrl"], headers={"X-Approval-Token": token}, **kw)


def test_a_token_in_the_url_is_not_taken_and_the_old_path_is_gone(
    flow_gateway: Gateway, catcher: Catcher, patient: dict[str, Any]
) -> None:
    change_id = flow_gateway.submit(name_change(patient)).json()["changeId"]
    note = catcher.next(change_id)
    assert note["callbackUrl"] == f"{flow_gateway.api}/callbacks/approval"
    assert "approveUrl" not in note and "rejectUrl" not in note

    in_url = httpx.post(note["callbackUrl"], params={"token": note["rejectToken"]})
    assert in_url.status_code == 400 and in_url.headers["content-type"] == "application/problem+json"
    assert [i["path"] for i in in_url.json()["issues"]] == ["X-Approval-Token"]
    old = httpx.post(f"{flow_gateway.api}/changes/{change_id}/approval/callback", params={"token": note["rejectToken"]})
    assert old.status_code == 410 and "/api/v1/callbacks/approval" in old.json()["detail"]
    assert flow_gateway.status(change_id).json()["status"] == "awaiting_approval", "nothing decided"

    in_body = httpx.post(note["callbackUrl"], json={"token": note["rejectToken"], "comment": "not this one"})
    assert in_body.status_code == 200, in_body.text
    assert flow_gateway.wait(change_id)["status"] == "rejected"
