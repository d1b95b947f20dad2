"""Service Bus-triggered functions run by the local runtime: what the function receives, completion on success,
abandon and dead-letter after the max delivery count on failure, lock renewal, concurrency limits, batches,
sessions, and the runtime's HTTP routes for the local queues.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage
from starlette.applications import Starlette
from starlette.testclient import TestClient

from devhost.app_index import AppIndex
from devhost.servicebus import MAX_DELIVERY_COUNT_EXCEEDED, LocalServiceBus
from devhost.servicebus_trigger import (
    BindingConfigurationError,
    ServiceBusTriggerPump,
    parse_timespan,
    queue_routes,
    resolve_setting,
)
from tests.runtime.sample_apps import APPS, only

SAMPLE_APP = "devhost_sample_sb_app"  # the app of the conftest fixtures `full_index` and `sample`
QUEUE = "sample-queue"
FAIL_QUEUE = "sample-fail-queue"


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMPLE_QUEUE", QUEUE)
    monkeypatch.setenv("SAMPLE_FAIL_QUEUE", FAIL_QUEUE)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[LocalServiceBus]:
    with LocalServiceBus(tmp_path / "sb.db", lock_duration=5, max_delivery_count=3) as b:
        yield b


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def drained(bus: LocalServiceBus, queue: str) -> Callable[[], bool]:
    return lambda: bus.counts(queue) == {"active": 0, "locked": 0, "deadLetter": 0, "scheduled": 0}


def test_the_function_gets_the_rich_message_and_success_completes_it(
    full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus
) -> None:
    bus.send(
        QUEUE,
        body=b'{"changeId":"c1"}',
        message_id="c1",
        application_properties={"changeId": "c1", "target": "ehr"},
        content_type="application/json",
        correlation_id="corr",
        subject="change",
    )
    with ServiceBusTriggerPump(only(full_index, "record"), bus, poll_interval=0.01) as pump:
        assert pump.queues == {"record": QUEUE}
        wait_until(lambda: len(sample.CALLS.get("record", [])) == 1)
        wait_until(drained(bus, QUEUE))
    [call] = sample.CALLS["record"]
    assert call["type"] is ServiceBusMessage
    assert call["message_id"] == "c1"
    assert call["body"] == b'{"changeId":"c1"}'
    assert call["application_properties"] == {"changeId": "c1", "target": "ehr"}
    assert call["user_properties"] == {"changeId": "c1", "target": "ehr"}
    assert call["delivery_count"] == 1
    assert call["sequence_number"] >= 1
    assert call["lock_token"]
    assert (call["content_type"], call["correlation_id"], call["subject"]) == ("application/json", "corr", "change")
    assert call["enqueued_time_utc"].tzinfo is not None
    assert call["metadata"]["MessageId"] == "c1"
    assert call["metadata"]["DeliveryCount"] == 1
    assert call["metadata"]["ApplicationProperties"] == {"changeId": "c1", "target": "ehr"}


def test_a_failing_function_abandons_until_the_message_is_dead_lettered(
    full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="devhost.servicebus")
    bus.send(FAIL_QUEUE, body=b"PATIENT SECRET", message_id="poison-1", application_properties={"n": 1})
    with ServiceBusTriggerPump(only(full_index, "always_fails"), bus, poll_interval=0.01):
        wait_until(lambda: bus.counts(FAIL_QUEUE)["deadLetter"] == 1)
    assert [c["delivery_count"] for c in sample.CALLS["always_fails"]] == [1, 2, 3]
    [dead] = bus.dead_letters(FAIL_QUEUE)
    assert (dead.message_id, dead.reason, dead.delivery_count) == ("poison-1", MAX_DELIVERY_COUNT_EXCEEDED, 3)
    failures = [r for r in caplog.records if "always_fails" in r.getMessage() and "poison-1" in r.getMessage()]
    assert len(failures) == 3
    assert "SECRET" not in caplog.text  # neither the body nor the exception's text is logged


def test_the_lock_is_renewed_while_a_long_invocation_runs(
    full_index: AppIndex, sample: ModuleType, tmp_path: Path
) -> None:
    with LocalServiceBus(tmp_path / "sb.db", lock_duration=0.2, max_delivery_count=3) as bus:
        bus.send("sample-slow", body=b"x", message_id="long", application_properties={"sleep": 0.7})
        with ServiceBusTriggerPump(only(full_index, "slow"), bus, poll_interval=0.01):
            wait_until(lambda: len(sample.CALLS.get("slow", [])) >= 1)
            wait_until(drained(bus, "sample-slow"))
            time.sleep(0.25)  # a lapsed lock would have been redelivered by now
        assert [c["delivery_count"] for c in sample.CALLS["slow"]] == [1]


def test_max_concurrent_calls_comes_from_host_json(
    full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus
) -> None:
    host_json = json.loads((APPS / "host.json").read_text())  # maxConcurrentCalls: 4
    for i in range(12):
        bus.send("sample-slow", body=b"x", message_id=f"m{i}", application_properties={"sleep": 0.05})
    pump = ServiceBusTriggerPump(only(full_index, "slow"), bus, poll_interval=0.01, host_json=host_json)
    assert (pump.max_concurrent_calls, pump.auto_complete) == (4, True)
    with pump:
        wait_until(lambda: len(sample.CALLS.get("slow", [])) == 12)
    assert 1 < sample.MAX_RUNNING <= 4


def test_host_json_settings_take_precedence(full_index: AppIndex, bus: LocalServiceBus) -> None:
    host_json = {
        "extensions": {
            "serviceBus": {
                "maxConcurrentCalls": 2,
                "autoCompleteMessages": False,
                "maxAutoLockRenewalDuration": "00:01:30",
                "maxMessageBatchSize": 7,
            }
        }
    }
    pump = ServiceBusTriggerPump(full_index, bus, max_concurrent_calls=9, auto_complete=True, host_json=host_json)
    assert (pump.max_concurrent_calls, pump.auto_complete, pump.max_lock_renewal, pump.max_batch_size) == (
        2,
        False,
        90.0,
        7,
    )


def test_without_auto_complete_a_successful_message_stays_locked(
    full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus
) -> None:
    bus.send(QUEUE, body=b"x")
    with ServiceBusTriggerPump(only(full_index, "record"), bus, poll_interval=0.01, auto_complete=False):
        wait_until(lambda: len(sample.CALLS.get("record", [])) == 1)
    assert bus.counts(QUEUE)["locked"] == 1


def test_cardinality_many_gets_a_list(full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus) -> None:
    for i in range(5):
        bus.send("sample-batch", body=str(i).encode(), message_id=f"b{i}")
    with ServiceBusTriggerPump(only(full_index, "batch"), bus, poll_interval=0.01):
        wait_until(lambda: len(sample.CALLS.get("batch", [])) == 5)
        wait_until(drained(bus, "sample-batch"))
    assert [c["body"] for c in sample.CALLS["batch"]] == [b"0", b"1", b"2", b"3", b"4"]
    assert all(c["type"] is ServiceBusMessage for c in sample.CALLS["batch"])
    assert sum(c["size"] for c in sample.CALLS["batch_sizes"]) == 5


def test_an_async_function_is_awaited(full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus) -> None:
    bus.send("sample-async", body=b"x", message_id="a1")
    with ServiceBusTriggerPump(only(full_index, "async_record"), bus, poll_interval=0.01):
        wait_until(drained(bus, "sample-async"))
    assert [c["message_id"] for c in sample.CALLS["async_record"]] == ["a1"]


def test_session_messages_are_processed_in_order_per_session(
    full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus
) -> None:
    for i in range(6):
        for session in ("A", "B", "C"):
            bus.send("sample-sessions", body=f"{session}{i}".encode(), session_id=session)
    with ServiceBusTriggerPump(only(full_index, "in_session"), bus, poll_interval=0.01):
        wait_until(lambda: len(sample.CALLS.get("in_session", [])) == 18)
    for session in ("A", "B", "C"):
        bodies = [c["body"] for c in sample.CALLS["in_session"] if c["body"].startswith(session.encode())]
        assert bodies == [f"{session}{i}".encode() for i in range(6)]


def test_a_missing_queue_setting_fails_at_start(
    full_index: AppIndex, bus: LocalServiceBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAMPLE_QUEUE")
    pump = ServiceBusTriggerPump(only(full_index, "record"), bus)
    with pytest.raises(BindingConfigurationError, match="SAMPLE_QUEUE"):
        pump.start()


def test_stop_is_prompt_and_the_pump_can_be_restarted(
    full_index: AppIndex, sample: ModuleType, bus: LocalServiceBus
) -> None:
    pump = ServiceBusTriggerPump(full_index, bus, poll_interval=0.05)
    pump.start()
    started = time.monotonic()
    pump.stop()
    assert time.monotonic() - started < 0.5
    bus.send(QUEUE, body=b"after restart")
    pump.start()
    try:
        wait_until(lambda: len(sample.CALLS.get("record", [])) == 1)
    finally:
        pump.stop()


def test_settings_and_timespans_resolve_like_the_host() -> None:
    assert resolve_setting("%A%-%B%", {"A": "x", "B": "y"}) == "x-y"
    assert resolve_setting("plain", {}) == "plain"
    with pytest.raises(BindingConfigurationError, match="'C'"):
        resolve_setting("%C%", {})
    assert parse_timespan("00:05:00").total_seconds() == 300
    assert parse_timespan("1.02:03:04.5").total_seconds() == 93784.5
    assert parse_timespan("2").total_seconds() == 2 * 86400
    with pytest.raises(ValueError, match="out of range"):
        parse_timespan("00:61:00")


# --- HTTP routes -------------------------------------------------------------------------------------------


@pytest.fixture
def client(bus: LocalServiceBus) -> Iterator[TestClient]:
    with TestClient(Starlette(routes=queue_routes(bus))) as c:
        yield c


def test_post_enqueues_and_a_duplicate_is_accepted_but_dropped(client: TestClient, bus: LocalServiceBus) -> None:
    message: dict[str, Any] = {
        "body": '{"changeId":"c9"}',
        "messageId": "c9",
        "applicationProperties": {"changeId": "c9", "n": 1},
        "contentType": "application/json",
        "correlationId": "corr",
        "subject": "change",
        "timeToLive": 60,
    }
    first = client.post("/runtime/servicebus/changes/messages", json=message)
    assert (first.status_code, first.json()) == (201, {"accepted": True, "messageId": "c9"})
    again = client.post("/runtime/servicebus/changes/messages", json=message)
    assert (again.status_code, again.json()) == (200, {"accepted": False, "duplicate": True, "messageId": "c9"})
    assert client.get("/runtime/servicebus/changes").json() == {
        "active": 1,
        "locked": 0,
        "deadLetter": 0,
        "scheduled": 0,
    }
    [msg] = bus.receive("changes")
    assert msg.body == b'{"changeId":"c9"}'
    assert msg.application_properties == {"changeId": "c9", "n": 1}
    assert (msg.content_type, msg.correlation_id, msg.subject) == ("application/json", "corr", "change")
    assert msg.time_to_live is not None and msg.time_to_live.total_seconds() == 60


def test_post_takes_base64_bodies_and_generates_a_message_id(client: TestClient, bus: LocalServiceBus) -> None:
    resp = client.post("/runtime/servicebus/q/messages", json={"bodyBase64": base64.b64encode(b"\x00\xff").decode()})
    assert resp.status_code == 201
    [msg] = bus.receive("q")
    assert msg.body == b"\x00\xff"
    assert msg.message_id == resp.json()["messageId"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"body": "x", "bodyBase64": "eA=="},
        {"bodyBase64": "not base64!"},
        {"body": 5},
        {"body": "x", "applicationProperties": {"a": {"nested": 1}}},
        {"body": "x", "applicationProperties": ["a"]},
        {"body": "x", "messageId": 5},
        {"body": "x", "timeToLive": -1},
        {"body": "x", "timeToLive": True},
        {"body": "x", "scheduledEnqueueTime": "2030-01-01T00:00:00"},
        {"body": "x", "messageId": "m" * 200},
        [1, 2],
    ],
)
def test_post_refuses_malformed_messages(client: TestClient, payload: Any) -> None:
    resp = client.post("/runtime/servicebus/q/messages", json=payload)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]


def test_post_refuses_non_json_and_oversized_messages(client: TestClient) -> None:
    assert client.post("/runtime/servicebus/q/messages", content=b"{nope").status_code == 400
    big = client.post("/runtime/servicebus/q/messages", json={"body": "x" * (256 * 1024 + 1)})
    assert big.status_code == 413


def test_dead_letters_are_listed_without_bodies_unless_asked(client: TestClient, bus: LocalServiceBus) -> None:
    bus.send("q", body=b"PHI inside", message_id="d1", application_properties={"k": "v"})
    bus.send("q", body=b"\xff\xfe", message_id="d2")
    for msg in bus.receive("q", max_messages=2):
        bus.dead_letter(msg.lock_token, "Rejected", "target said no")
    listing = client.get("/runtime/servicebus/q/deadletter").json()
    assert [(d["messageId"], d["reason"], d["description"], d["deliveryCount"]) for d in listing] == [
        ("d1", "Rejected", "target said no", 1),
        ("d2", "Rejected", "target said no", 1),
    ]
    assert "body" not in listing[0] and "bodyBase64" not in listing[0]
    assert listing[0]["applicationProperties"] == {"k": "v"}
    with_bodies = client.get("/runtime/servicebus/q/deadletter", params={"includeBody": "true"}).json()
    assert with_bodies[0]["body"] == "PHI inside"
    assert with_bodies[1]["bodyBase64"] == base64.b64encode(b"\xff\xfe").decode()
