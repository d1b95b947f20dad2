"""Storage SDK failures in our error tree: which are outages (retryable, 503 with Retry-After) and which are not.

The exceptions are azure-core's own, as its transport and pipeline raise them; the adapter edge is exercised on a
small adapter whose "storage" raises them. The same paths against a paused Azurite: tests/integration/
test_storage_outage.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from shared.adapters.storage_edge import storage_adapter
from shared.adapters.storage_errors import is_outage, storage_error
from shared.api.responses import answer, problem
from shared.core.errors import AlreadyExistsError, ConcurrencyError, NotFoundError, StorageUnavailableError


def answered(status: int, kind: type[HttpResponseError] = HttpResponseError) -> HttpResponseError:
    error = kind(message=f"the service answered {status}")
    error.status_code = status
    return error


OUTAGES = [
    ServiceRequestError("connection refused"),
    ServiceRequestTimeoutError("connect timed out"),
    ServiceResponseError("connection reset"),
    ServiceResponseTimeoutError("read timed out"),
    IncompleteReadError(message="the body stopped half-way"),
    answered(500),
    answered(503),
    answered(504),
    answered(408),
    answered(429),
]


@pytest.mark.parametrize("exc", OUTAGES, ids=lambda e: f"{type(e).__name__}-{getattr(e, 'status_code', '')}")
def test_an_outage_becomes_the_retryable_storage_error(exc: Any) -> None:
    assert is_outage(exc)
    mapped = storage_error(exc, "change c-1")
    assert isinstance(mapped, StorageUnavailableError)
    assert mapped.status == 503 and mapped.code == "storage-unavailable" and mapped.retry_after
    assert "the service answered" not in mapped.detail and "refused" not in mapped.detail, "no SDK text passed on"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (answered(409, ResourceExistsError), AlreadyExistsError),
        (answered(412, ResourceModifiedError), ConcurrencyError),
        (answered(404, ResourceNotFoundError), NotFoundError),
    ],
)
def test_the_expected_answers_keep_their_meaning(exc: HttpResponseError, expected: type[Exception]) -> None:
    assert not is_outage(exc)
    assert isinstance(storage_error(exc, "change c-1"), expected)


@pytest.mark.parametrize("exc", [answered(400), answered(403, ClientAuthenticationError)])
def test_a_refusal_is_no_outage_and_is_left_as_it_is(exc: HttpResponseError) -> None:
    assert not is_outage(exc)
    assert storage_error(exc, "change c-1") is exc


@storage_adapter("ensure_tables")
class Adapter:
    """An adapter whose storage fails with what it is told to raise, counting its round trips."""

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.calls: list[str] = []

    def _storage(self, name: str) -> str:
        self.calls.append(name)
        if self.failure is not None:
            raise self.failure
        return name

    def ensure_tables(self) -> None:
        self._storage("ensure")

    def read(self) -> str:
        return self._storage("read")

    def refuse(self) -> None:
        raise ValueError("bad argument")


def test_the_edge_makes_the_tables_on_first_use_once() -> None:
    adapter = Adapter()
    assert adapter.calls == [], "building an adapter does no I/O"
    assert adapter.read() == "read" and adapter.read() == "read"
    assert adapter.calls == ["ensure", "read", "read"]


def test_the_edge_turns_an_outage_into_the_storage_error_and_tries_the_tables_again_later() -> None:
    adapter = Adapter()
    adapter.failure = ServiceResponseTimeoutError("read timed out")
    with pytest.raises(StorageUnavailableError) as raised:
        adapter.read()
    assert isinstance(raised.value.__cause__, ServiceResponseTimeoutError)
    adapter.failure = None
    assert adapter.read() == "read"
    assert adapter.calls == ["ensure", "ensure", "read"], "the tables were not known to exist: made first"


def test_the_edge_leaves_other_failures_alone() -> None:
    adapter = Adapter()
    adapter.failure = answered(400)
    with pytest.raises(HttpResponseError):
        adapter.read()
    adapter.failure = None
    with pytest.raises(ValueError, match="bad argument"):
        adapter.refuse()


def test_a_storage_outage_answers_503_problem_json_with_retry_after() -> None:
    def action() -> Any:
        raise storage_error(ServiceRequestError("connection refused"), "change c-1")

    response = answer(action, "/api/v1/changes/c-1")
    assert response.status == 503 and response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    assert response.body["type"] == "urn:writeback:problem:storage-unavailable"
    assert problem(StorageUnavailableError(retry_after=0.2)).headers["Retry-After"] == "1", "whole seconds, at least 1"
    assert "Retry-After" not in problem(NotFoundError("no")).headers
