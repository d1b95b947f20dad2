"""Approval notifications: the payload (paths, the callback URL and tokens, never values) and the webhook client's
error mapping, against a real loopback HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from shared.adapters.approval_webhook import WebhookNotifier
from shared.app.approval_links import ApprovalLinkSigner, ApprovalRound
from shared.app.notifications import NotificationKind, build_notification
from shared.core.errors import ConfigurationError, PermanentError, RetryableError
from shared.core.models import ChangeRecord, ChangeStatus, Operation, PayloadRef, Principal

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EXPIRES = NOW + timedelta(hours=72)
CANARY = "CANARY-555-0199-Zebediah"
SIG = "s3cr3tSASsignatureValue"
CHANGE = "3f1c2b9e-5d4a-4b7e-9a61-0c2d3e4f5a6b"
TOKENS = {"approve": "a.b", "reject": "c.d"}
CALLBACK = "https://gw/api/v1/callbacks/approval"

# --- the loopback webhook ----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Webhook:
    """A loopback HTTP server that answers POSTs from a queue of answers (200 when empty) and records them."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.received: list[Received] = []
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._lock:
                    hook.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    answer = hook.answers.pop(0) if hook.answers else Answer()
                if answer.delay:
                    time.sleep(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left is what some tests do on purpose

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Shaped like a Power Automate trigger URL, SAS signature and all."""
        return (
            f"http://127.0.0.1:{self.port}/workflows/abc/triggers/manual/paths/invoke"
            f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}"
        )

    def reset(self) -> None:
        with self._lock:
            self.answers.clear()
            self.received.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook_server() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.stop()


@pytest.fixture
def webhook(webhook_server: Webhook) -> Webhook:
    webhook_server.reset()
    return webhook_server


@pytest.fixture
def notifier(webhook: Webhook) -> Iterator[WebhookNotifier]:
    with WebhookNotifier(webhook.url, timeout=2.0) as n:
        yield n


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the record -------------------------------------------------------------------------------------------


def record(**overrides: Any) -> ChangeRecord:
    values: dict[str, Any] = {
        "change_id": CHANGE,
        "status": ChangeStatus.AWAITING_APPROVAL,
        "target": "local-ehr",
        "operation": Operation.PATCH,
        "resource_type": "Patient",
        "resource_id": "p1",
        "requested_by": Principal(app_id="crm", user_id="u-42", display_name=CANARY, roles=["Writeback.Submit"]),
        "submitted_at": NOW,
        "updated_at": NOW,
        "request_hash": "a" * 64,
        "payload": PayloadRef(kind="inline", sha256="b" * 64, size=40, inline=json.dumps({"name": CANARY})),
        "plan": {
            "baseVersion": "v1",
            "currentVersion": "v2",
            "changedPaths": ["Patient.name", "Patient.telecom"],
            "diff": [
                {"op": "replace", "path": "/name/0/family", "value": CANARY},
                {"op": "replace", "path": "/telecom/0/value", "value": "555-0100"},
            ],
            "merged": False,
            "downstreamPaths": [],
            "decision": "approve",
            "reasons": [
                {"path": "Patient.name", "rule": "approve", "code": "path-rule", "message": f"needs approval {CANARY}"},
                {"path": "Patient.telecom", "rule": "allow", "code": "path-rule", "message": "owned by crm"},
            ],
            "policyVersion": "sha256:1234",
            "source": "crm",
            "proposed": {"kind": "inline", "sha256": "c" * 64, "size": 10, "inline": json.dumps({"x": CANARY})},
        },
        "approval": {"required": True, "expiresAt": EXPIRES.isoformat()},
    }
    values.update(overrides)
    return ChangeRecord.model_validate(values)


def notification(rec: ChangeRecord, kind: NotificationKind = "approval-requested") -> dict[str, Any]:
    return build_notification(rec, kind=kind, callback_url=CALLBACK, tokens=TOKENS, status_url="s", review_url="r")


# --- payload ------------------------------------------------------------------------------------------------


def test_payload_shape() -> None:
    payload = build_notification(
        record(),
        kind="approval-requested",
        callback_url=CALLBACK,
        tokens=TOKENS,
        status_url=f"https://gw/api/v1/changes/{CHANGE}",
        review_url=f"https://gw/review/{CHANGE}",
    )
    assert payload == {
        "kind": "approval-requested",
        "changeId": CHANGE,
        "target": "local-ehr",
        "resourceType": "Patient",
        "resourceRef": "Patient/p1",
        "operation": "patch",
        "requestedBy": {"app": "crm", "user": "u-42"},
        "changedPaths": ["Patient.name", "Patient.telecom"],
        "approvalPaths": ["Patient.name"],
        "reasons": [{"path": "Patient.name", "rule": "approve"}, {"path": "Patient.telecom", "rule": "allow"}],
        "policyVersion": "sha256:1234",
        "expiresAt": EXPIRES.isoformat(),
        "callbackUrl": CALLBACK,
        "approveToken": TOKENS["approve"],
        "rejectToken": TOKENS["reject"],
        "statusUrl": f"https://gw/api/v1/changes/{CHANGE}",
        "reviewUrl": f"https://gw/review/{CHANGE}",
    }
    json.dumps(payload)


def test_payload_carries_no_values() -> None:
    rec = record()
    assert CANARY in rec.model_dump_json()  # the canary is really there to leak
    payload = build_notification(
        rec, kind="approval-reminder", callback_url=CALLBACK, tokens=TOKENS, status_url="s", review_url="r"
    )
    text = json.dumps(payload)
    assert CANARY not in text
    assert "555-0100" not in text
    assert "diff" not in payload and "value" not in text


def test_payload_for_a_create_has_no_resource_ref() -> None:
    payload = notification(record(operation=Operation.CREATE, resource_id=None))
    assert payload["resourceRef"] is None and payload["operation"] == "create"


@pytest.mark.parametrize(
    ("overrides", "tokens"),
    [
        ({"plan": None}, TOKENS),
        ({"approval": None}, TOKENS),
        ({"approval": {"required": True}}, TOKENS),
        ({}, {"approve": "a.b"}),
    ],
)
def test_payload_needs_plan_deadline_and_tokens(overrides: dict[str, Any], tokens: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="approval notification needs"):
        build_notification(
            record(**overrides), kind="approval-requested", callback_url=CALLBACK, tokens=tokens, status_url="s",
            review_url="r",
        )  # fmt: skip


# --- delivery -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202])
def test_notify_posts_json(webhook: Webhook, notifier: WebhookNotifier, status: int) -> None:
    webhook.answers.append(Answer(status))
    payload = build_notification(
        record(), kind="approval-requested", callback_url=CALLBACK, tokens=TOKENS, status_url="s", review_url="r"
    )
    notifier.notify(payload)
    (got,) = webhook.received
    assert json.loads(got.body) == payload
    assert got.headers["content-type"] == "application/json"
    assert parse_qs(urlsplit(got.path).query)["sig"] == [SIG]


def test_notification_tokens_work_end_to_end(webhook: Webhook, notifier: WebhookNotifier) -> None:
    signer = ApprovalLinkSigner({"k1": bytes(range(32))}, clock=lambda: NOW)
    tokens = signer.callback_tokens(CHANGE, EXPIRES, ApprovalRound(9, 0, "ab" * 32))
    notifier.notify(
        build_notification(
            record(), kind="approval-requested", callback_url=CALLBACK, tokens=tokens, status_url="s", review_url="r"
        )
    )
    body = json.loads(webhook.received[0].body)
    assert body["callbackUrl"] == CALLBACK and "?" not in body["callbackUrl"], "no token in a URL"
    for field_name, decision in (("approveToken", "approve"), ("rejectToken", "reject")):
        assert signer.verify(body[field_name], change_id=CHANGE).decision == decision


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (Answer(429, {"Retry-After": "7"}), 7.0),
        (Answer(429), None),
        (Answer(500), None),
        (Answer(502, {"Retry-After": "garbage"}), None),
        (Answer(503, {"Retry-After": "120"}), 120.0),
        (Answer(408), None),
    ],
)
def test_retryable_answers(
    webhook: Webhook, notifier: WebhookNotifier, answer: Answer, retry_after: float | None
) -> None:
    webhook.answers.append(answer)
    with pytest.raises(RetryableError) as exc:
        notifier.notify({"kind": "approval-requested"})
    assert exc.value.downstream_status == answer.status
    assert exc.value.retry_after == retry_after
    assert_no_secret(exc.value)


def test_retry_after_as_http_date(webhook: Webhook, notifier: WebhookNotifier) -> None:
    webhook.answers.append(Answer(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    with pytest.raises(RetryableError) as exc:
        notifier.notify({})
    assert exc.value.retry_after == 0.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422, 302])
def test_permanent_answers(webhook: Webhook, notifier: WebhookNotifier, status: int) -> None:
    webhook.answers.append(Answer(status, {"Location": "http://127.0.0.1:1/elsewhere"}, b'{"error":"nope"}'))
    with pytest.raises(PermanentError) as exc:
        notifier.notify({})
    assert exc.value.downstream_status == status
    assert len(webhook.received) == 1  # a redirect is not followed
    assert_no_secret(exc.value)


def test_connection_refused_is_retryable() -> None:
    url = f"http://127.0.0.1:{closed_port()}/invoke?sig={SIG}"
    with WebhookNotifier(url, timeout=2.0) as notifier, pytest.raises(RetryableError) as exc:
        notifier.notify({})
    assert exc.value.downstream_status is None
    assert_no_secret(exc.value)


def test_timeout_is_retryable(webhook: Webhook) -> None:
    webhook.answers.append(Answer(200, delay=1.0))
    with (
        WebhookNotifier(webhook.url, timeout=0.2) as notifier,
        pytest.raises(RetryableError, match="timed out") as exc,
    ):
        notifier.notify({})
    assert_no_secret(exc.value)


def test_a_given_client_is_used_and_not_closed(webhook: Webhook) -> None:
    with httpx.Client() as http:
        WebhookNotifier(webhook.url, http=http).close()
        WebhookNotifier(webhook.url, http=http).notify({"n": 1})
        assert not http.is_closed
    assert len(webhook.received) == 1


def assert_no_secret(exc: BaseException) -> None:
    """Neither the error nor a chained cause that a traceback would print may carry the webhook's signature."""
    assert SIG not in str(exc) and SIG not in repr(exc)
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


# --- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://example.org/x?sig={SIG}",
        f"http://flows.example.org/x?sig={SIG}",
        f"prod-01.westeurope.logic.azure.com/workflows?sig={SIG}",
        "",
    ],
)
def test_webhook_url_must_be_https(url: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        WebhookNotifier(url)
    assert SIG not in str(exc.value)


def test_repr_hides_the_signature(webhook: Webhook) -> None:
    notifier = WebhookNotifier(f"https://prod-01.westeurope.logic.azure.com/workflows/x?sig={SIG}")
    assert SIG not in repr(notifier) and "logic.azure.com" in repr(notifier)
    notifier.close()
