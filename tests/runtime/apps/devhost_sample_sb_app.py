"""A sample v2-model app with Service Bus-triggered functions, for the local runtime's trigger tests.

Each function records what it received in ``CALLS`` (function name -> list of dicts), so tests can assert on it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import azure.functions as func

app = func.FunctionApp()

CALLS: dict[str, list[dict[str, Any]]] = {}
_lock = threading.Lock()
_running = 0
MAX_RUNNING = 0


def _record(name: str, msg: func.ServiceBusMessage) -> None:
    with _lock:
        CALLS.setdefault(name, []).append(
            {
                "message_id": msg.message_id,
                "body": msg.get_body(),
                "application_properties": msg.application_properties,
                "user_properties": msg.user_properties,
                "delivery_count": msg.delivery_count,
                "sequence_number": msg.sequence_number,
                "lock_token": msg.lock_token,
                "content_type": msg.content_type,
                "correlation_id": msg.correlation_id,
                "subject": msg.subject,
                "enqueued_time_utc": msg.enqueued_time_utc,
                "metadata": msg.metadata,
                "type": type(msg),
            }
        )


def reset() -> None:
    global MAX_RUNNING
    with _lock:
        CALLS.clear()
        MAX_RUNNING = 0


@app.service_bus_queue_trigger(arg_name="msg", queue_name="%SAMPLE_QUEUE%", connection="ServiceBusConnection")
def record(msg: func.ServiceBusMessage) -> None:
    _record("record", msg)


@app.service_bus_queue_trigger(arg_name="msg", queue_name="%SAMPLE_FAIL_QUEUE%", connection="ServiceBusConnection")
def always_fails(msg: func.ServiceBusMessage) -> None:
    _record("always_fails", msg)
    raise RuntimeError(f"cannot process {msg.get_body()!r}")  # the body must not reach the logs


@app.service_bus_queue_trigger(arg_name="msg", queue_name="sample-slow", connection="ServiceBusConnection")
def slow(msg: func.ServiceBusMessage) -> None:
    global _running, MAX_RUNNING
    with _lock:
        _running += 1
        MAX_RUNNING = max(MAX_RUNNING, _running)
    try:
        time.sleep(float(msg.application_properties.get("sleep", 0.1)))
    finally:
        with _lock:
            _running -= 1
    _record("slow", msg)


@app.service_bus_queue_trigger(
    arg_name="msgs", queue_name="sample-batch", connection="ServiceBusConnection", cardinality="many"
)
def batch(msgs: list[func.ServiceBusMessage]) -> None:
    with _lock:
        CALLS.setdefault("batch_sizes", []).append({"size": len(msgs)})
    for msg in msgs:
        _record("batch", msg)


@app.service_bus_queue_trigger(arg_name="msg", queue_name="sample-async", connection="ServiceBusConnection")
async def async_record(msg: func.ServiceBusMessage) -> None:
    await asyncio.sleep(0)
    _record("async_record", msg)


@app.service_bus_queue_trigger(
    arg_name="msg", queue_name="sample-sessions", connection="ServiceBusConnection", is_sessions_enabled=True
)
def in_session(msg: func.ServiceBusMessage) -> None:
    time.sleep(0.01)
    _record("in_session", msg)
