"""The bodies callers send to the decision and operations endpoints, and the one way a body is parsed.

A body that does not parse, or breaks a rule, is a ``RequestError`` whose issues name each field as a JSON pointer.
The change request itself is ``shared.core.models.ChangeRequest`` (intake parses it).

The OpenAPI document's definitions of these bodies are generated from the models (``shared.api.openapi``): a model's
docstring and its fields' ``description`` and ``json_schema_extra`` (``x-ms-summary``, ``x-ms-visibility``) are what a
custom connector shows, so they are written for its users.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.core.errors import Issue, PayloadTooLargeError, UnsupportedMediaTypeError
from shared.core.problems import request_error_from

Body = TypeVar("Body", bound=BaseModel)

# Decisions, resolutions, replays and callbacks: a comment of 2,000 characters (8 KB in UTF-8 at most) and a few
# fields. The change request has its own limit (WRITEBACK_MAX_BODY_BYTES).
SMALL_BODY_BYTES = 16 * 1024


def state_changing_body(headers: Mapping[str, str], body: bytes, *, limit: int = SMALL_BODY_BYTES) -> bytes:
    """The body of a state-changing request: 413 past ``limit``; 415 when it has content that is not JSON (a form
    or text body is what a cross-site form can send without a CORS preflight). An empty body is fine."""
    if len(body) > limit:
        raise PayloadTooLargeError(
            f"The body is larger than {limit} bytes", issues=[Issue("", "too-large", f"at most {limit} bytes")]
        )
    if body.strip() and not _is_json(content_type(headers)):
        raise UnsupportedMediaTypeError(
            "Send the body as application/json",
            issues=[Issue("Content-Type", "unsupported", "application/json (or another +json type)")],
        )
    return body


def content_type(headers: Mapping[str, str]) -> str:
    wanted = "content-type"
    value = next((v for k, v in headers.items() if k.lower() == wanted), "")
    return value.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def parse_body(model: type[Body], body: bytes, *, what: str, empty_ok: bool = True) -> Body:
    """``body`` as ``model`` (an empty body as ``{}`` when ``empty_ok``); a RequestError naming the fields if not."""
    try:
        return model.model_validate_json(body if body.strip() or not empty_ok else b"{}")
    except ValidationError as exc:
        raise request_error_from(exc, detail=f"The body is not {what}") from None


class ApprovalRequest(BaseModel):
    """Approve or reject a change awaiting approval (POST /changes/{changeId}/approval)."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"] = Field(
        json_schema_extra={"x-ms-summary": "Decision", "x-ms-visibility": "important"}
    )
    comment: str | None = Field(default=None, max_length=2000, json_schema_extra={"x-ms-summary": "Comment"})


class CallbackBody(BaseModel):
    """A decision through a signed approval token (POST /callbacks/approval): the token (when not sent in the
    X-Approval-Token header), who decided, and a comment."""

    model_config = ConfigDict(extra="ignore")

    token: str | None = Field(
        default=None,
        max_length=1024,
        description="The approveToken or rejectToken of the notification, if not sent in the X-Approval-Token header.",
        json_schema_extra={"x-ms-summary": "Approval token", "x-ms-visibility": "advanced"},
    )
    comment: str | None = Field(default=None, max_length=2000, json_schema_extra={"x-ms-summary": "Comment"})
    approver: str | None = Field(default=None, max_length=256, json_schema_extra={"x-ms-summary": "Approver"})


class ResolveRequest(BaseModel):
    """Replan a change in conflict on the target's current version, or discard it (POST /changes/{changeId}/resolve)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    action: Literal["replan", "discard"] = Field(
        description="replan: plan again on the current version (through the policy); discard: end it.",
        json_schema_extra={"x-ms-summary": "Action", "x-ms-visibility": "important"},
    )
    comment: str | None = Field(default=None, max_length=2000, json_schema_extra={"x-ms-summary": "Comment"})


class ReplayRequest(BaseModel):
    """Which failed, conflict or expired changes to run again; a dry run by default (POST /changes/replay)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Literal["failed", "conflict", "expired"] = Field(
        default="failed", json_schema_extra={"x-ms-summary": "Status", "x-ms-visibility": "important"}
    )
    target: str | None = Field(default=None, max_length=64, json_schema_extra={"x-ms-summary": "Target"})
    error_code: str | None = Field(
        default=None, alias="errorCode", max_length=100, json_schema_extra={"x-ms-summary": "Error code"}
    )
    since: datetime | None = Field(default=None, json_schema_extra={"x-ms-summary": "Since"})
    until: datetime | None = Field(default=None, json_schema_extra={"x-ms-summary": "Until"})
    dry_run: bool = Field(
        default=True,
        alias="dryRun",
        description="List what would be retried without retrying (the default).",
        json_schema_extra={"x-ms-summary": "Dry run", "x-ms-visibility": "important"},
    )
    limit: int = Field(default=100, ge=1, le=1000, json_schema_extra={"x-ms-summary": "Limit"})
