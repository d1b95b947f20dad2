"""``MessagePublisher`` on Azure Service Bus: ids only on the wire, ``MessageId`` = change id (broker de-duplication).

Nothing connects until the first ``publish``: the client and the queue sender are created then and reused.
The SDK's sender is not thread-safe, so sends are serialised by a lock (a send is a few milliseconds).
Never point this at a local AMQP broker that is not Service Bus: the SDK hangs there without an error.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from typing import TYPE_CHECKING

from azure.core.exceptions import ClientAuthenticationError
from azure.servicebus import ServiceBusMessage
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
)

from shared.core.errors import AuthError, ConfigurationError, DownstreamError, PermanentError, RetryableError
from shared.core.models import ChangeMessage

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.servicebus import ServiceBusClient, ServiceBusSender

CONTENT_TYPE = "application/json"


def message_id_for(message: ChangeMessage) -> str:
    """The broker's de-duplication key: the change id (and, for an operator's retry, which retry it is)."""
    if message.kind == "retry":
        return f"{message.change_id}:retry:{message.attempt}"
    return message.change_id


def build_message(message: ChangeMessage) -> ServiceBusMessage:
    """The Service Bus message for a change: the ChangeMessage JSON (ids only), never a resource."""
    properties: dict[str | bytes, int | float | bytes | bool | str | uuid.UUID] = {
        "changeId": message.change_id,
        "target": message.target,
        "kind": message.kind,
    }
    if message.traceparent:
        properties["traceparent"] = message.traceparent
    return ServiceBusMessage(
        json.dumps(message.to_wire(), separators=(",", ":")),
        message_id=message_id_for(message),
        content_type=CONTENT_TYPE,
        subject=message.kind,
        application_properties=properties,
    )


def publish_error(exc: Exception, queue_name: str) -> DownstreamError:
    what = f"send to queue {queue_name!r} failed ({type(exc).__name__})"
    if isinstance(exc, ServiceBusAuthenticationError | ServiceBusAuthorizationError | ClientAuthenticationError):
        return AuthError(detail=what)
    if isinstance(exc, MessageSizeExceededError | MessagingEntityNotFoundError | MessagingEntityDisabledError):
        return PermanentError(detail=what)
    return RetryableError(detail=what)


class ServiceBusPublisher:
    """Publishes ``ChangeMessage``s to one queue. Give a namespace (+ credential), or a connection string."""

    def __init__(
        self,
        queue_name: str,
        *,
        fully_qualified_namespace: str | None = None,
        credential: TokenCredential | None = None,
        connection_string: str | None = None,
    ) -> None:
        if not queue_name:
            raise ConfigurationError("Service Bus publisher needs a queue name")
        if bool(fully_qualified_namespace) == bool(connection_string):
            raise ConfigurationError(
                "Service Bus publisher needs exactly one of a fully qualified namespace or a connection string"
            )
        self.queue_name = queue_name
        self._namespace = fully_qualified_namespace
        self._credential = credential
        self._connection_string = connection_string
        self._client: ServiceBusClient | None = None
        self._sender: ServiceBusSender | None = None
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether a sender has been opened (only after the first publish)."""
        return self._sender is not None

    def publish(self, message: ChangeMessage) -> None:
        sb_message = build_message(message)
        with self._lock:
            try:
                self._ensure_sender().send_messages(sb_message)
            except (ServiceBusError, ClientAuthenticationError) as exc:
                if isinstance(exc, ServiceBusConnectionError):
                    self._close_locked()  # rebuild the link on the next publish
                raise publish_error(exc, self.queue_name) from None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def __enter__(self) -> ServiceBusPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ensure_sender(self) -> ServiceBusSender:
        if self._sender is None:
            from azure.servicebus import ServiceBusClient

            if self._connection_string:
                client = ServiceBusClient.from_connection_string(self._connection_string)
            else:
                assert self._namespace is not None
                credential = self._credential
                if credential is None:
                    from azure.identity import DefaultAzureCredential

                    credential = self._credential = DefaultAzureCredential()
                client = ServiceBusClient(self._namespace, credential)
            self._client = client
            self._sender = client.get_queue_sender(self.queue_name)
        return self._sender

    def _close_locked(self) -> None:
        sender, client = self._sender, self._client
        self._sender = self._client = None
        for closable in (sender, client):
            if closable is not None:
                # closing a broken link must not hide the original error
                with contextlib.suppress(Exception):
                    closable.close()
