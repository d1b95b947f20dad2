"""The local queue publisher sends exactly what the Service Bus publisher would, through the runtime's HTTP route,
over a real uvicorn server on a loopback port (and through Starlette's test transport); errors map like the real
publisher's: unreachable or 5xx is retryable, 4xx is permanent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from devhost.servicebus import LocalServiceBus
from devhost.servicebus_trigger import queue_routes
from shared.adapters.local_queue_publisher import LocalQueuePublisher, wire_payload
from shared.adapters.servicebus_publisher import build_message, message_id_for
from shared.core.errors import ConfigurationError, PermanentError, RetryableError
from shared.core.models import ChangeMessage
from shared.core.ports import MessagePublisher
from tools.services.process import free_port

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[LocalServiceBus]:
    with LocalServiceBus(tmp_path / "sb.db") as b:
        yield b


@pytest.fixture
def endpoint(bus: LocalServiceBus) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=queue_routes(bus)), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def assert_arrived_as_built(bus: LocalServiceBus, queue: str, change: ChangeMessage) -> None:
    expected = build_message(change)
    [got] = bus.receive(queue, max_messages=10)
    assert got.body == b"".join(expected.body)
    assert got.message_id == expected.message_id == message_id_for(change)
    assert got.application_properties == expected.application_properties
    assert got.content_type == expected.content_type
    assert got.subject == expected.subject
    assert got.correlation_id == expected.correlation_id
    assert got.session_id == expected.session_id
    assert got.time_to_live is None and expected.time_to_live is None


def test_what_arrives_is_what_build_message_sends(endpoint: str, bus: LocalServiceBus) -> None:
    change = ChangeMessage(change_id="chg-1", target="local-ehr", traceparent=TRACEPARENT)
    with LocalQueuePublisher(endpoint, "changes") as publisher:
        sender: MessagePublisher = publisher
        sender.publish(change)
    assert_arrived_as_built(bus, "changes", change)


def test_a_retry_message_without_traceparent(endpoint: str, bus: LocalServiceBus) -> None:
    change = ChangeMessage(change_id="chg-2", target="ehr", kind="retry")
    with LocalQueuePublisher(endpoint + "/", "changes") as publisher:
        publisher.publish(change)
    assert_arrived_as_built(bus, "changes", change)


def test_a_duplicate_publish_succeeds_and_is_dropped(endpoint: str, bus: LocalServiceBus) -> None:
    change = ChangeMessage(change_id="chg-3", target="ehr")
    with LocalQueuePublisher(endpoint, "changes") as publisher:
        publisher.publish(change)
        publisher.publish(change)
    assert bus.counts("changes")["active"] == 1
    assert_arrived_as_built(bus, "changes", change)


def test_an_operators_retry_is_a_new_message_and_its_repeat_is_dropped(endpoint: str, bus: LocalServiceBus) -> None:
    with LocalQueuePublisher(endpoint, "changes") as publisher:
        publisher.publish(ChangeMessage(change_id="chg-4", target="ehr"))
        retry = ChangeMessage(change_id="chg-4", target="ehr", kind="retry", attempt=1)
        publisher.publish(retry)
        publisher.publish(retry)
    ids = sorted(m.message_id for m in bus.receive("changes", max_messages=10))
    assert ids == ["chg-4", "chg-4:retry:1"]


def test_through_the_test_client_transport(bus: LocalServiceBus) -> None:
    change = ChangeMessage(change_id="chg-4", target="ehr")
    with TestClient(Starlette(routes=queue_routes(bus))) as client:
        LocalQueuePublisher("http://testserver", "changes", http=client).publish(change)
    assert_arrived_as_built(bus, "changes", change)


def test_the_wire_payload_is_base64_of_the_built_body() -> None:
    payload = wire_payload(ChangeMessage(change_id="chg-5", target="ehr", traceparent=TRACEPARENT))
    assert payload["messageId"] == "chg-5"
    assert payload["contentType"] == "application/json"
    assert payload["subject"] == "change"
    assert payload["applicationProperties"] == {
        "changeId": "chg-5",
        "target": "ehr",
        "kind": "change",
        "traceparent": TRACEPARENT,
    }
    assert "body" not in payload and payload["bodyBase64"]


def test_an_unreachable_runtime_is_retryable() -> None:
    publisher = LocalQueuePublisher(f"http://127.0.0.1:{free_port()}", "changes", timeout=2)
    with pytest.raises(RetryableError):
        publisher.publish(ChangeMessage(change_id="c", target="t"))


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, RetryableError), (503, RetryableError), (429, RetryableError), (400, PermanentError), (404, PermanentError)],
)
def test_http_errors_map_to_the_error_tree(status: int, error: type[Exception]) -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(status)))
    publisher = LocalQueuePublisher("http://runtime", "changes", http=http)
    with pytest.raises(error) as raised:
        publisher.publish(ChangeMessage(change_id="c", target="t"))
    assert getattr(raised.value, "downstream_status", None) == status


def test_an_oversized_message_is_permanent(tmp_path: Path) -> None:
    with (
        LocalServiceBus(tmp_path / "small.db", max_message_size=64) as small,
        TestClient(Starlette(routes=queue_routes(small))) as client,
    ):
        publisher = LocalQueuePublisher("http://testserver", "changes", http=client)
        with pytest.raises(PermanentError):
            publisher.publish(ChangeMessage(change_id="c" * 60, target="t"))


def test_the_queue_name_is_escaped_in_the_url() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(201, json={"accepted": True})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    LocalQueuePublisher("http://runtime/", "a/b", http=http).publish(ChangeMessage(change_id="c", target="t"))
    assert seen == ["/runtime/servicebus/a%2Fb/messages"]


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        LocalQueuePublisher("", "q")
    with pytest.raises(ConfigurationError):
        LocalQueuePublisher("http://x", "")
