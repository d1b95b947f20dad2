"""The one mapping from HTTP outcomes (responses and transport failures) to the gateway's error tree."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from shared.adapters.fhir_http import error_for
from shared.core.errors import (
    AuthError,
    ConflictError,
    DownstreamError,
    NotFoundError,
    PermanentError,
    RetryableError,
)
from shared.core.fhir_headers import if_match_value, parse_etag, parse_retry_after

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Patient.name[0].family: Jane Doe is bad"}],
}


def response(status: int, *, headers: dict[str, str] | None = None, json: object | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, json=json)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, PermanentError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (405, PermanentError),
        (408, RetryableError),
        (409, ConflictError),
        (410, NotFoundError),
        (412, ConflictError),
        (413, PermanentError),
        (422, PermanentError),
        (429, RetryableError),
        (500, RetryableError),
        (501, PermanentError),
        (502, RetryableError),
        (503, RetryableError),
        (504, RetryableError),
        (507, RetryableError),
        (302, PermanentError),
    ],
)
def test_status_maps_to_error_class(status: int, expected: type[Exception]) -> None:
    err = error_for(response(status), method="PUT", resource_type="Patient")
    assert type(err) is expected or isinstance(err, expected)
    assert isinstance(err, DownstreamError)
    assert err.downstream_status == status
    assert err.detail.startswith(f"PUT Patient: HTTP {status}")


def test_not_found_is_both_a_not_found_and_a_downstream_error() -> None:
    err = error_for(response(404, json=OUTCOME), method="GET", resource_type="Patient")
    assert isinstance(err, NotFoundError)
    assert isinstance(err, DownstreamError)
    assert err.operation_outcome == OUTCOME


@pytest.mark.parametrize("status", [429, 503, 502, 504])
def test_retry_after_seconds(status: int) -> None:
    err = error_for(response(status, headers={"Retry-After": "2"}), method="POST", resource_type="Observation")
    assert isinstance(err, RetryableError)
    assert err.retry_after == 2


def test_retry_after_http_date() -> None:
    when = datetime.fromtimestamp(NOW + 120, tz=UTC)
    headers = {"Retry-After": format_datetime(when, usegmt=True)}
    err = error_for(response(503, headers=headers), method="GET", resource_type="Patient", now=NOW)
    assert isinstance(err, RetryableError)
    assert err.retry_after == pytest.approx(120)


def test_retry_absent_or_garbage_is_none() -> None:
    for headers in ({}, {"Retry-After": "soon"}, {"Retry-After": ""}):
        err = error_for(response(429, headers=headers), method="GET", resource_type="Patient")
        assert isinstance(err, RetryableError)
        assert err.retry_after is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("7", 7.0), ("1.5", 1.5), ("-3", 0.0), ("Wed, 25 Nov 2026 11:00:00 GMT", 0.0), ("x", None)],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_operation_outcome_is_carried_but_detail_has_no_content() -> None:
    err = error_for(response(422, json=OUTCOME), method="POST", resource_type="Patient")
    assert isinstance(err, PermanentError)
    assert err.operation_outcome == OUTCOME
    assert "Jane" not in str(err)
    assert "Jane" not in err.detail
    assert err.detail == "POST Patient: HTTP 422 Unprocessable Entity"


def test_non_outcome_body_is_not_carried() -> None:
    body = {"resourceType": "Patient", "name": [{"family": "Doe"}]}
    err = error_for(response(400, json=body), method="POST", resource_type="Patient")
    assert err.operation_outcome is None
    assert "Doe" not in str(err)
    err = error_for(httpx.Response(400, content=b"<html>oops</html>"), method="POST", resource_type="Patient")
    assert err.operation_outcome is None


def test_timeouts_and_connection_failures_are_retryable_without_url() -> None:
    request = httpx.Request("GET", "http://ehr.example/fhir/Patient?identifier=urn:mrn|12345")
    for exc in (
        httpx.ReadTimeout("timed out", request=request),
        httpx.ConnectTimeout("timed out", request=request),
        httpx.ConnectError("refused", request=request),
        httpx.RemoteProtocolError("closed", request=request),
    ):
        err = error_for(exc, method="GET", resource_type="Patient")
        assert isinstance(err, RetryableError), exc
        assert err.downstream_status is None
        assert "12345" not in str(err)
    assert "timed out" in str(error_for(httpx.ReadTimeout("x", request=request), method="GET", resource_type="Patient"))


@pytest.mark.parametrize(
    ("etag", "vid"),
    [
        ('W/"3"', "3"),
        ('"3"', "3"),
        ("3", "3"),
        ('W/"8c0e5b1a-2f4e-4a55-9d1e-0b1f0c2d3e4f"', "8c0e5b1a-2f4e-4a55-9d1e-0b1f0c2d3e4f"),
        ("", None),
        (None, None),
    ],
)
def test_parse_etag_keeps_versions_opaque(etag: str | None, vid: str | None) -> None:
    assert parse_etag(etag) == vid


@pytest.mark.parametrize("version", ["3", '"3"', 'W/"3"'])
def test_if_match_value(version: str) -> None:
    assert if_match_value(version) == 'W/"3"'
