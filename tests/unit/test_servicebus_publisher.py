"""The Service Bus publisher (message shape; nothing connects at construction) and its fake's duplicate detection.

No test here talks to a broker: the SDK hangs against anything that is not Service Bus (docs/FACTS).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)

from shared.adapters.servicebus_publisher import ServiceBusPublisher, build_message, publish_error
from shared.core.errors import AuthError, ConfigurationError, PermanentError, RetryableError
from shared.core.models import ChangeMessage
from shared.core.ports import MessagePublisher
from shared.fakes.messages import FakeMessagePublisher

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def body_of(message: Any) -> dict[str, Any]:
    return dict(json.loads(b"".join(message.body)))


def test_message_carries_ids_only_and_is_keyed_on_the_change_id() -> None:
    change = ChangeMessage(change_id="chg-123", target="local-ehr", traceparent=TRACEPARENT)
    message = build_message(change)
    assert body_of(message) == {
        "changeId": "chg-123",
        "target": "local-ehr",
        "kind": "change",
        "attempt": 0,
        "traceparent": TRACEPARENT,
    }
    assert message.message_id == "chg-123"
    assert message.content_type == "application/json"
    assert message.subject == "change"
    assert message.session_id is None
    assert message.application_properties == {
        "changeId": "chg-123",
        "target": "local-ehr",
        "kind": "change",
        "traceparent": TRACEPARENT,
    }
    # round-trips into the model the dispatcher parses
    assert ChangeMessage.model_validate(body_of(message)) == change


def test_message_without_traceparent_has_no_such_property() -> None:
    message = build_message(ChangeMessage(change_id="chg-9", target="ehr", kind="retry"))
    assert message.subject == "retry"
    assert message.application_properties is not None
    assert "traceparent" not in message.application_properties
    assert "traceparent" not in body_of(message)


class RefusingCredential:
    """Any token request fails the test: constructing the publisher must not authenticate or connect."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise AssertionError("the publisher asked for a token at construction")


def test_constructing_the_publisher_does_not_connect() -> None:
    by_identity = ServiceBusPublisher(
        "changes", fully_qualified_namespace="nowhere.servicebus.windows.net", credential=RefusingCredential()
    )
    by_string = ServiceBusPublisher(
        "changes", connection_string="Endpoint=sb://nowhere.invalid/;SharedAccessKeyName=k;SharedAccessKey=s"
    )
    assert not by_identity.connected
    assert not by_string.connected
    by_identity.close()
    by_string.close()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"fully_qualified_namespace": "ns.servicebus.windows.net", "connection_string": "Endpoint=sb://x/"}],
)
def test_publisher_needs_exactly_one_way_to_connect(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        ServiceBusPublisher("changes", **kwargs)  # type: ignore[arg-type]


def test_send_failures_map_to_the_error_tree() -> None:
    assert isinstance(publish_error(ServiceBusServerBusyError(message="busy"), "q"), RetryableError)
    assert isinstance(publish_error(ServiceBusConnectionError(message="down"), "q"), RetryableError)
    assert isinstance(publish_error(ServiceBusAuthorizationError(message="no"), "q"), AuthError)
    assert isinstance(publish_error(MessageSizeExceededError(message="big"), "q"), PermanentError)


# --- the fake: Service Bus duplicate detection on MessageId ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_fake_drops_duplicates_within_the_window() -> None:
    clock = Clock()
    publisher = FakeMessagePublisher(duplicate_window=timedelta(minutes=10), clock=clock)
    publisher.publish(ChangeMessage(change_id="a", target="ehr"))
    publisher.publish(ChangeMessage(change_id="a", target="ehr"))  # "succeeds", dropped
    publisher.publish(ChangeMessage(change_id="b", target="ehr"))
    assert [m.change_id for m in publisher.sent] == ["a", "b"]
    clock.now += timedelta(minutes=9)
    publisher.publish(ChangeMessage(change_id="a", target="ehr"))
    assert [m.change_id for m in publisher.sent] == ["a", "b"]
    clock.now += timedelta(minutes=10)
    publisher.publish(ChangeMessage(change_id="a", target="ehr"))
    assert [m.change_id for m in publisher.sent] == ["a", "b", "a"]


def test_fake_injected_failure_accepts_nothing() -> None:
    publisher = FakeMessagePublisher()
    publisher.fail_next(RetryableError(detail="busy"), count=2)
    for _ in range(2):
        with pytest.raises(RetryableError):
            publisher.publish(ChangeMessage(change_id="a", target="ehr"))
    assert publisher.sent == []
    publisher.publish(ChangeMessage(change_id="a", target="ehr"))
    assert [m.change_id for m in publisher.sent] == ["a"]


def test_both_publishers_satisfy_the_port() -> None:
    ports: list[MessagePublisher] = [
        FakeMessagePublisher(),
        ServiceBusPublisher(
            "q", connection_string="Endpoint=sb://nowhere.invalid/;SharedAccessKeyName=k;SharedAccessKey=s"
        ),
    ]
    assert all(callable(p.publish) for p in ports)
