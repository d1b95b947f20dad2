"""Errors as RFC 9457 problem details: the body every refusal, failure and stored error takes.

``problem_body`` is the one place an error becomes a problem document (the HTTP face wraps it in a response; the
pipeline stores it on a change record); ``request_error_from`` turns pydantic's validation errors into a
``RequestError`` whose issues name each offending field as a JSON pointer into the request body.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from shared.core.errors import FhirValidationError, Issue, RequestError, WritebackError

PROBLEM_TYPE_BASE = "urn:writeback:problem:"


def problem_body(error: WritebackError, *, instance: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail or error.title,
    }
    if instance:
        body["instance"] = instance
    if error.issues:
        body["issues"] = [i.to_dict() for i in error.issues]
    outcome = getattr(error, "operation_outcome", None)
    if isinstance(error, FhirValidationError) and outcome:
        body["operationOutcome"] = outcome
    return body


def pointer(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a JSON pointer into the request body."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc if not str(p).startswith("function-")]
    return "/" + "/".join(parts) if parts else ""


def request_error_from(
    exc: ValidationError, *, detail: str = "The request body is not a valid change request"
) -> RequestError:
    issues = []
    for err in exc.errors(include_url=False, include_input=False):
        kind = str(err.get("type", "invalid"))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = "unknown field"
        path = pointer(tuple(err.get("loc", ())))
        named = _NAMED_FIELD.match(message)
        if not path and named:
            # Whole-body rules (``ChangeRequest._shape``) name their field first, in quotes.
            path = "/" + named.group(1).replace(".", "/")
        issues.append(Issue(path, kind.replace("_", "-"), message))
    return RequestError(detail, issues=issues)


_NAMED_FIELD = re.compile(r"^'([A-Za-z][A-Za-z0-9.]*)'")
