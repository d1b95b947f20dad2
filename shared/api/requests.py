"""The bodies callers send to the decision and operations endpoints, and the one way a body is parsed.

A body that does not parse, or breaks a rule, is a ``RequestError`` whose issues name each field as a JSON pointer.
The change request itself is ``shared.core.models.ChangeRequest`` (intake parses it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.core.problems import request_error_from

Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], body: bytes, *, what: str, empty_ok: bool = True) -> Body:
    """``body`` as ``model`` (an empty body as ``{}`` when ``empty_ok``); a RequestError naming the fields if not."""
    try:
        return model.model_validate_json(body if body.strip() or not empty_ok else b"{}")
    except ValidationError as exc:
        raise request_error_from(exc, detail=f"The body is not {what}") from None


class ApprovalRequest(BaseModel):
    """``POST /changes/{id}/approval``."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=2000)


class CallbackBody(BaseModel):
    """``POST /changes/{id}/approval/callback`` (a signed link): an optional comment and the name the flow gives."""

    model_config = ConfigDict(extra="ignore")

    comment: str | None = Field(default=None, max_length=2000)
    approver: str | None = Field(default=None, max_length=256)


class ResolveRequest(BaseModel):
    """``POST /changes/{id}/resolve``: plan a conflicting change again on the current version, or discard it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    action: Literal["replan", "discard"]
    comment: str | None = Field(default=None, max_length=2000)


class ReplayRequest(BaseModel):
    """``POST /changes/replay``: run many failed / conflict / expired changes again (a dry run by default)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Literal["failed", "conflict", "expired"] = "failed"
    target: str | None = Field(default=None, max_length=64)
    error_code: str | None = Field(default=None, alias="errorCode", max_length=100)
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = Field(default=True, alias="dryRun")
    limit: int = Field(default=100, ge=1, le=1000)
