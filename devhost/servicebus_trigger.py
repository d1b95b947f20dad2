"""Deliver the local Service Bus to the app's ``serviceBusTrigger`` functions, as the Functions host does.

For each such function a dispatcher thread peek-locks messages from its queue and hands each one (or, with
``cardinality="many"``, each batch) to a worker thread, at most ``maxConcurrentCalls`` at a time per function
(``maxConcurrentSessions`` for session-enabled functions). The function gets the rich
``azure.functions.servicebus.ServiceBusMessage`` the Python worker builds. Success completes the message
(``autoCompleteMessages``); an exception abandons it, so it is redelivered and, after the queue's max delivery
count, dead-lettered. Locks are renewed while an invocation runs, up to ``maxAutoLockRenewalDuration``.

Logs name the function and the message id, never the body or the exception's text: both may carry PHI.

``queue_routes`` gives the runtime's HTTP server a way to send to, and look into, the local queues.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.functions import meta
from azure.functions.servicebus import ServiceBusMessage

from devhost.app_index import SERVICE_BUS, AppIndex, FunctionInfo
from devhost.invoke import invoke
from devhost.servicebus import (
    LocalServiceBus,
    MessageLockLostError,
    MessageSizeExceededError,
    ReceivedMessage,
)

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

logger = logging.getLogger("devhost.servicebus")

DEFAULT_MAX_AUTO_LOCK_RENEWAL = 300.0
DEFAULT_MAX_MESSAGE_BATCH_SIZE = 1000
DEFAULT_MAX_CONCURRENT_SESSIONS = 8

_SETTING = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?$")


class BindingConfigurationError(ValueError):
    """A trigger binding cannot be set up (e.g. an app setting it names is missing)."""


def resolve_setting(value: str, environ: Mapping[str, str] | None = None, *, what: str = "binding") -> str:
    """Replace each ``%NAME%`` with the app setting ``NAME``, as the host's name resolver does."""
    env = os.environ if environ is None else environ

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise BindingConfigurationError(f"{what}: app setting {name!r} is not set")
        return env[name]

    return _SETTING.sub(lookup, value)


def parse_timespan(text: str) -> timedelta:
    """A .NET TimeSpan string as host.json and timer schedules use it: ``[d.]hh:mm[:ss[.fffffff]]`` or ``d``."""
    text = text.strip()
    if text.isascii() and text.isdigit():  # .NET reads a bare integer as a number of days
        return timedelta(days=int(text))
    match = _TIMESPAN.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a TimeSpan ([d.]hh:mm[:ss[.fffffff]])")
    days, hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes) > 59 or (seconds and int(seconds) > 59):
        raise ValueError(f"{text!r} is not a TimeSpan: a component is out of range")
    return timedelta(
        days=int(days or 0),
        hours=int(hours),
        minutes=int(minutes),
        seconds=int(seconds or 0),
        microseconds=int((fraction or "0").ljust(7, "0")) // 10,
    )


def to_function_message(message: ReceivedMessage) -> ServiceBusMessage:
    """The ``ServiceBusMessage`` the Python worker gives a function, with the trigger metadata the host sends."""
    properties = dict(message.application_properties)
    metadata: dict[str, meta.Datum] = {
        "MessageId": meta.Datum(message.message_id, "string"),
        "DeliveryCount": meta.Datum(message.delivery_count, "int"),
        "SequenceNumber": meta.Datum(message.sequence_number, "int"),
        "EnqueuedTimeUtc": meta.Datum(message.enqueued_time.isoformat(), "string"),
        "LockedUntil": meta.Datum(message.locked_until.isoformat(), "string"),
        "LockToken": meta.Datum(message.lock_token, "string"),
        "ApplicationProperties": meta.Datum(json.dumps(properties), "json"),
        "UserProperties": meta.Datum(json.dumps(properties), "json"),
    }
    optional: dict[str, Any] = {
        "ContentType": message.content_type,
        "CorrelationId": message.correlation_id,
        "Subject": message.subject,
        "Label": message.subject,
        "SessionId": message.session_id,
        "ExpiresAtUtc": message.expires_at.isoformat() if message.expires_at else None,
    }
    metadata.update({key: meta.Datum(value, "string") for key, value in optional.items() if value is not None})
    return ServiceBusMessage(
        body=message.body,
        trigger_metadata=metadata,
        application_properties=properties,
        user_properties=dict(properties),
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        delivery_count=message.delivery_count,
        enqueued_sequence_number=message.sequence_number,
        enqueued_time_utc=message.enqueued_time,
        expires_at_utc=message.expires_at,
        label=message.subject,
        locked_until=message.locked_until,
        lock_token=message.lock_token,
        message_id=message.message_id,
        scheduled_enqueue_time_utc=message.scheduled_enqueue_time,
        sequence_number=message.sequence_number,
        session_id=message.session_id,
        state=0,  # Active
        subject=message.subject,
        time_to_live=message.time_to_live,
    )


@dataclass
class _Listener:
    fn: FunctionInfo
    queue: str
    many: bool
    sessions: bool
    max_calls: int
    in_flight: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def idle(self) -> bool:
        return self.in_flight == 0


class ServiceBusTriggerPump:
    """Runs every ``serviceBusTrigger`` function of the app against a ``LocalServiceBus``.

    With ``host_json`` (the parsed ``host.json``), ``extensions.serviceBus`` settings take precedence over the
    keyword arguments: ``maxConcurrentCalls``, ``maxConcurrentSessions``, ``autoCompleteMessages``,
    ``maxAutoLockRenewalDuration`` and ``maxMessageBatchSize``.
    """

    def __init__(
        self,
        index: AppIndex,
        bus: LocalServiceBus,
        *,
        max_concurrent_calls: int = 16,
        poll_interval: float = 0.05,
        auto_complete: bool = True,
        host_json: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        durable_client_json: Callable[[], str] | None = None,
    ) -> None:
        self._durable_client_json = durable_client_json
        settings: Mapping[str, Any] = {}
        if host_json is not None:
            settings = host_json.get("extensions", {}).get("serviceBus", {}) or {}
        self.bus = bus
        self.poll_interval = poll_interval
        self.max_concurrent_calls = int(settings.get("maxConcurrentCalls", max_concurrent_calls))
        self.max_concurrent_sessions = int(settings.get("maxConcurrentSessions", DEFAULT_MAX_CONCURRENT_SESSIONS))
        self.auto_complete = bool(settings.get("autoCompleteMessages", auto_complete))
        self.max_batch_size = int(settings.get("maxMessageBatchSize", DEFAULT_MAX_MESSAGE_BATCH_SIZE))
        renewal = settings.get("maxAutoLockRenewalDuration")
        self.max_lock_renewal = (
            parse_timespan(str(renewal)).total_seconds() if renewal is not None else DEFAULT_MAX_AUTO_LOCK_RENEWAL
        )
        if self.max_concurrent_calls < 1 or self.max_batch_size < 1:
            raise BindingConfigurationError("maxConcurrentCalls and maxMessageBatchSize must be at least 1")
        self._functions = index.by_trigger(SERVICE_BUS)
        self._environ = environ
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._renewer_stop = threading.Event()
        self._renewals: dict[str, float] = {}  # lock token -> monotonic time its renewal window ends
        self._renewals_lock = threading.Lock()

    @property
    def queues(self) -> dict[str, str]:
        """Function name -> resolved queue name (after ``start``)."""
        return {listener.fn.name: listener.queue for listener in self._listeners}

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("the Service Bus trigger pump is already running")
        self._listeners = [self._listener(fn) for fn in self._functions]
        if not self._listeners:
            return
        self._stop.clear()
        self._renewer_stop.clear()
        workers = sum(listener.max_calls for listener in self._listeners)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="devhost-sb-call")
        for listener in self._listeners:
            thread = threading.Thread(
                target=self._dispatch, args=(listener,), name=f"devhost-sb-{listener.fn.name}", daemon=True
            )
            self._threads.append(thread)
        self._threads.append(threading.Thread(target=self._renew_locks, name="devhost-sb-renew", daemon=True))
        for thread in self._threads:
            thread.start()
        for listener in self._listeners:
            logger.info("Service Bus trigger %s listening on queue %s", listener.fn.name, listener.queue)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, wait up to ``timeout`` seconds for running invocations, then return.

        An invocation still running then keeps its message locked until the lock lapses, after which the
        message is redelivered, as when a host instance shuts down.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        dispatchers, renewer = self._threads[:-1], self._threads[-1:]
        for listener in self._listeners:
            with listener.changed:
                listener.changed.notify_all()
        for thread in dispatchers:
            thread.join(max(0.0, deadline - time.monotonic()))
        for listener in self._listeners:
            with listener.changed:
                listener.changed.wait_for(listener.idle, max(0.0, deadline - time.monotonic()))
        self._renewer_stop.set()
        for thread in renewer:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self._threads = []

    def __enter__(self) -> ServiceBusTriggerPump:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------------------------

    def _listener(self, fn: FunctionInfo) -> _Listener:
        raw_queue = fn.trigger.get("queueName")
        if not raw_queue:
            raise BindingConfigurationError(f"{fn.name}: serviceBusTrigger has no queueName (topics are not emulated)")
        queue = resolve_setting(str(raw_queue), self._environ, what=f"{fn.name} queueName")
        cardinality = str(fn.trigger.get("cardinality", "one")).lower()
        if cardinality not in ("one", "many"):
            raise BindingConfigurationError(f"{fn.name}: unsupported cardinality {cardinality!r}")
        sessions = bool(fn.trigger.get("isSessionsEnabled", False))
        max_calls = self.max_concurrent_sessions if sessions else self.max_concurrent_calls
        return _Listener(fn=fn, queue=queue, many=cardinality == "many", sessions=sessions, max_calls=max_calls)

    def _dispatch(self, listener: _Listener) -> None:
        while not self._stop.is_set():
            with listener.changed:
                listener.changed.wait_for(
                    lambda: listener.in_flight < listener.max_calls or self._stop.is_set(), self.poll_interval
                )
                free = listener.max_calls - listener.in_flight
            if self._stop.is_set():
                return
            if free <= 0:
                continue
            seen = self.bus.sends_seen()
            try:
                batches = self._receive(listener, free)
            except Exception as exc:
                logger.error("Service Bus trigger %s: receive from %s failed (%s)", listener.fn.name, listener.queue,
                             type(exc).__name__)  # fmt: skip
                self._stop.wait(self.poll_interval)
                continue
            if not batches:
                self.bus.wait_for_send(seen, self.poll_interval)  # a send in this process wakes it at once
                continue
            for batch in batches:
                self._submit(listener, batch)

    def _receive(self, listener: _Listener, free: int) -> list[list[ReceivedMessage]]:
        if listener.many:
            messages = self.bus.receive(listener.queue, max_messages=self.max_batch_size)
            return [messages] if messages else []
        if not listener.sessions:
            return [[m] for m in self.bus.receive(listener.queue, max_messages=free)]
        # One message per call: the bus keeps a session locked while its message is, so the next receive
        # moves on to another session and each session is processed in order, one message at a time.
        batches = []
        for _ in range(free):
            messages = self.bus.receive(listener.queue, max_messages=1)
            if not messages:
                break
            batches.append(messages)
        return batches

    def _submit(self, listener: _Listener, batch: list[ReceivedMessage]) -> None:
        with self._renewals_lock:
            for message in batch:
                self._renewals[message.lock_token] = time.monotonic() + self.max_lock_renewal
        with listener.changed:
            listener.in_flight += 1
        assert self._executor is not None  # shut down only after every dispatcher has returned
        self._executor.submit(self._call, listener, batch)

    def _call(self, listener: _Listener, batch: list[ReceivedMessage]) -> None:
        fn = listener.fn
        try:
            argument: Any = [to_function_message(m) for m in batch] if listener.many else to_function_message(batch[0])
            client = self._durable_client_json() if fn.durable_client_param and self._durable_client_json else None
            invoke(fn, argument, durable_client_json=client)
        except Exception as exc:
            for message in batch:
                logger.warning(
                    "Service Bus trigger %s failed for message %s (delivery %d): %s; abandoning",
                    fn.name,
                    message.message_id,
                    message.delivery_count,
                    type(exc).__name__,
                )
            logger.debug("Service Bus trigger %s traceback", fn.name, exc_info=True)
            self._settle(fn, batch, self.bus.abandon, "abandon")
        else:
            logger.debug("Service Bus trigger %s succeeded for %s", fn.name, ", ".join(m.message_id for m in batch))
            if self.auto_complete:
                self._settle(fn, batch, self.bus.complete, "complete")
        finally:
            self._finish(listener, batch)

    def _settle(self, fn: FunctionInfo, batch: list[ReceivedMessage], action: Callable[[str], None], what: str) -> None:
        for message in batch:
            with self._renewals_lock:
                self._renewals.pop(message.lock_token, None)
            try:
                action(message.lock_token)
            except MessageLockLostError:
                logger.warning(
                    "Service Bus trigger %s: could not %s message %s, its lock was lost (it will be redelivered)",
                    fn.name,
                    what,
                    message.message_id,
                )
            except Exception as exc:
                logger.error("Service Bus trigger %s: %s of message %s failed (%s)", fn.name, what,
                             message.message_id, type(exc).__name__)  # fmt: skip

    def _finish(self, listener: _Listener, batch: list[ReceivedMessage]) -> None:
        with self._renewals_lock:
            for message in batch:
                self._renewals.pop(message.lock_token, None)
        with listener.changed:
            listener.in_flight -= 1
            listener.changed.notify_all()

    def _renew_locks(self) -> None:
        # Renew at a third of the lock duration so a late renewal still lands well inside the lock.
        interval = max(0.01, min(self.bus.lock_duration / 3, 10.0))
        while not self._renewer_stop.wait(interval):
            now = time.monotonic()
            with self._renewals_lock:
                tokens = [token for token, until in self._renewals.items() if until > now]
            for token in tokens:
                try:
                    self.bus.renew_lock(token)
                except MessageLockLostError:
                    with self._renewals_lock:
                        self._renewals.pop(token, None)
                except Exception as exc:
                    logger.error("Service Bus lock renewal failed (%s)", type(exc).__name__)


# --- HTTP routes ----------------------------------------------------------------------------------------


class _BadRequestError(Exception):
    """The POSTed message is malformed (answered with 400)."""


def _message_from_json(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _BadRequestError("the request body must be a JSON object")
    if ("body" in data) == ("bodyBase64" in data):
        raise _BadRequestError("give exactly one of 'body' (text) and 'bodyBase64'")
    if "body" in data:
        if not isinstance(data["body"], str):
            raise _BadRequestError("'body' must be a string; use 'bodyBase64' for bytes")
        body = data["body"].encode("utf-8")
    else:
        try:
            body = base64.b64decode(str(data["bodyBase64"]), validate=True)
        except (binascii.Error, ValueError):
            raise _BadRequestError("'bodyBase64' is not valid base64") from None
    properties = data.get("applicationProperties") or {}
    if not isinstance(properties, dict) or not all(
        v is None or isinstance(v, str | int | float | bool) for v in properties.values()
    ):
        raise _BadRequestError("'applicationProperties' must be an object of strings, numbers, booleans or nulls")
    fields: dict[str, Any] = {"body": body, "application_properties": properties}
    for key, name in (
        ("messageId", "message_id"),
        ("contentType", "content_type"),
        ("correlationId", "correlation_id"),
        ("subject", "subject"),
        ("sessionId", "session_id"),
    ):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise _BadRequestError(f"'{key}' must be a string")
        fields[name] = value
    ttl = data.get("timeToLive")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
            raise _BadRequestError("'timeToLive' must be a positive number of seconds")
        fields["time_to_live"] = float(ttl)
    scheduled = data.get("scheduledEnqueueTime")
    if scheduled is not None:
        try:
            when = datetime.fromisoformat(str(scheduled))
        except ValueError:
            raise _BadRequestError("'scheduledEnqueueTime' must be an ISO 8601 date-time with an offset") from None
        if when.tzinfo is None:
            raise _BadRequestError("'scheduledEnqueueTime' must carry a UTC offset")
        fields["scheduled_enqueue_time"] = when
    return fields


def queue_routes(bus: LocalServiceBus) -> list[Route]:
    """``POST /runtime/servicebus/{queue}/messages``, ``GET /runtime/servicebus/{queue}`` (counts) and
    ``GET /runtime/servicebus/{queue}/deadletter`` (bodies only with ``?includeBody=true``)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def problem(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"error": detail}, status_code=status)

    async def send(request: Request) -> Response:
        queue = request.path_params["queue"]
        try:
            fields = _message_from_json(json.loads(await request.body()))
        except json.JSONDecodeError:
            return problem(400, "the request body is not JSON")
        except _BadRequestError as exc:
            return problem(400, str(exc))
        message_id = fields.setdefault("message_id", None)
        if message_id is None:
            fields["message_id"] = message_id = uuid.uuid4().hex
        try:
            accepted = await run_in_threadpool(lambda: bus.send(queue, **fields))
        except MessageSizeExceededError as exc:
            return problem(413, str(exc))
        except (ValueError, TypeError) as exc:
            return problem(400, str(exc))
        if accepted:
            return JSONResponse({"accepted": True, "messageId": message_id}, status_code=201)
        return JSONResponse({"accepted": False, "duplicate": True, "messageId": message_id}, status_code=200)

    async def counts(request: Request) -> Response:
        queue = request.path_params["queue"]
        return JSONResponse(await run_in_threadpool(bus.counts, queue))

    async def dead_letters(request: Request) -> Response:
        queue = request.path_params["queue"]
        include_body = request.query_params.get("includeBody", "").lower() in ("true", "1", "yes")
        letters = await run_in_threadpool(bus.dead_letters, queue)
        items = []
        for letter in letters:
            item: dict[str, Any] = {
                "messageId": letter.message_id,
                "sequenceNumber": letter.sequence_number,
                "deliveryCount": letter.delivery_count,
                "reason": letter.reason,
                "description": letter.description,
                "applicationProperties": letter.application_properties,
                "contentType": letter.content_type,
                "correlationId": letter.correlation_id,
                "subject": letter.subject,
                "sessionId": letter.session_id,
                "enqueuedTime": letter.enqueued_time.isoformat(),
                "deadLetteredTime": letter.dead_lettered_time.isoformat(),
            }
            if include_body:
                try:
                    item["body"] = letter.body.decode("utf-8")
                except UnicodeDecodeError:
                    item["bodyBase64"] = base64.b64encode(letter.body).decode("ascii")
            items.append(item)
        return JSONResponse(items)

    return [
        Route("/runtime/servicebus/{queue}/messages", send, methods=["POST"]),
        Route("/runtime/servicebus/{queue}/deadletter", dead_letters, methods=["GET"]),
        Route("/runtime/servicebus/{queue}", counts, methods=["GET"]),
    ]
