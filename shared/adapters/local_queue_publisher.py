"""``MessagePublisher`` for the local runtime: POSTs to its Service Bus emulator instead of Azure Service Bus.

The message is built by ``build_message`` from the Service Bus publisher, so the message id (the change id, the
de-duplication key), body, application properties, content type and subject are exactly what Azure receives; the
local path cannot drift from the real one. A duplicate is dropped by the emulator and the publish still succeeds,
as with Service Bus duplicate detection.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any
from urllib.parse import quote

import httpx

from shared.adapters.servicebus_publisher import build_message
from shared.core.errors import ConfigurationError, PermanentError, RetryableError
from shared.core.models import ChangeMessage

DEFAULT_TIMEOUT = 10.0


def _property_value(value: object) -> str | int | float | bool:
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"application property type {type(value).__name__} is not supported locally")


def wire_payload(message: ChangeMessage) -> dict[str, Any]:
    """The JSON the local runtime's ``POST /runtime/servicebus/{queue}/messages`` takes, from ``build_message``."""
    sb_message = build_message(message)
    body = b"".join(sb_message.body)
    payload: dict[str, Any] = {
        "bodyBase64": base64.b64encode(body).decode("ascii"),
        "messageId": sb_message.message_id,
        "applicationProperties": {
            (key.decode("utf-8") if isinstance(key, bytes) else key): _property_value(value)
            for key, value in (sb_message.application_properties or {}).items()
        },
    }
    optional: dict[str, Any] = {
        "contentType": sb_message.content_type,
        "correlationId": sb_message.correlation_id,
        "subject": sb_message.subject,
        "sessionId": sb_message.session_id,
        "timeToLive": sb_message.time_to_live.total_seconds() if sb_message.time_to_live else None,
        "scheduledEnqueueTime": (
            sb_message.scheduled_enqueue_time_utc.isoformat() if sb_message.scheduled_enqueue_time_utc else None
        ),
    }
    payload.update({key: value for key, value in optional.items() if value is not None})
    return payload


class LocalQueuePublisher:
    """Publishes ``ChangeMessage``s to one queue of the local runtime at ``endpoint`` (e.g. ``http://127.0.0.1:7071``)."""

    def __init__(
        self, endpoint: str, queue: str, *, http: httpx.Client | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if not endpoint:
            raise ConfigurationError("local queue publisher needs the runtime's endpoint")
        if not queue:
            raise ConfigurationError("local queue publisher needs a queue name")
        self.queue_name = queue
        self.url = f"{endpoint.rstrip('/')}/runtime/servicebus/{quote(queue, safe='')}/messages"
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)

    def publish(self, message: ChangeMessage) -> None:
        what = f"send to local queue {self.queue_name!r}"
        try:
            response = self._http.post(self.url, json=wire_payload(message))
        except httpx.TransportError as exc:
            raise RetryableError(detail=f"{what} failed ({type(exc).__name__})") from None
        status = response.status_code
        if status in (200, 201):
            return
        if status >= 500 or status in (408, 429):
            raise RetryableError(detail=f"{what} failed (HTTP {status})", downstream_status=status)
        raise PermanentError(detail=f"{what} was refused (HTTP {status})", downstream_status=status)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> LocalQueuePublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
