"""The typed parts of a change record: its plan, approval, result, error and resolution.

Each part is stored inside the record's JSON as a camelCase object. ``to_record`` gives exactly the keys that were
set (a key set to ``None`` stays, as ``null``), so a part round-trips unchanged; ``from_record`` reads a stored part
and keeps keys this version does not know (``extra="allow"``), so records written by another version still load.
Timestamps are stored as ``datetime.isoformat()`` strings, the form records have always had.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel

from shared.core.errors import WritebackError
from shared.core.problems import PROBLEM_TYPE_BASE, problem_body


class StoredPart(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Self:
        return cls.model_validate(data)


LINK_ACTOR = "approval-link"  # the actor of a decision made through a signed link by an unverified holder


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class PayloadRef(StoredPart):
    """Where a stored body lives: inline in the change record, or in a blob (claim check)."""

    kind: Literal["inline", "blob"]
    sha256: str
    size: int
    inline: str | None = None
    blob_name: str | None = None


class PlanConflict(StoredPart):
    """Element paths the caller changed (``ours``), the target changed since (``theirs``), and both (``overlap``)."""

    ours: list[str] = Field(default_factory=list)
    theirs: list[str] = Field(default_factory=list)
    overlap: list[str] = Field(default_factory=list)


class ChangePlan(StoredPart):
    """What the prepare step planned and decided; ``proposed`` points at the write input (a payload)."""

    base_version: str | None = None
    current_version: str | None = None
    changed_paths: list[str] = Field(default_factory=list)
    diff: list[dict[str, Any]] = Field(default_factory=list)
    merged: bool = False
    downstream_paths: list[str] = Field(default_factory=list)
    decision: Literal["allow", "approve", "deny"] | None = None
    reasons: list[dict[str, Any]] = Field(default_factory=list)
    policy_version: str | None = None
    source: str | None = None
    proposed: PayloadRef | None = None
    conflict: PlanConflict | None = None


class ApprovalState(StoredPart):
    """The approval a change needs (``required``, ``paths``, ``expiresAt``; ``round``, the sequence of the round's
    ``awaiting_approval`` event, and ``diffHash``, the hash of the diff put to the approvers) and, once made, the
    decision. ``decidedBy`` is a verified identity, or ``approval-link`` when a signed link's holder decided without
    one; ``claimedBy`` is then the name the holder gave, recorded as claimed and never presented as verified."""

    required: bool | None = None
    expires_at: datetime | None = None
    paths: list[str] = Field(default_factory=list)
    round: int | None = None
    diff_hash: str | None = None
    decision: Literal["approved", "rejected", "expired", "cancelled"] | None = None
    decided_by: str | None = None
    decided_by_name: str | None = None
    claimed_by: str | None = None
    decided_at: datetime | None = None
    via: str | None = None
    comment: str | None = None

    @property
    def verified_approver(self) -> str | None:
        """Who decided, when their identity was verified (not a link's holder who only gave a name)."""
        return self.decided_by if self.decided_by != LINK_ACTOR else None

    @field_serializer("expires_at", "decided_at")
    def _timestamp(self, value: datetime | None) -> str | None:
        return _iso(value)


class ChangeResult(StoredPart):
    """What the write left at the target: its version, where, the Provenance, and whether the read-back agreed."""

    version_id: str | None = None
    location: str | None = None
    resource_ref: str | None = None
    provenance: str | None = None
    verified: bool | None = None
    no_change: bool | None = None


class StoredProblem(StoredPart):
    """Why a change ended badly, as the RFC 9457 problem document the API answers with."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    issues: list[dict[str, Any]] = Field(default_factory=list)
    operation_outcome: dict[str, Any] | None = None

    @classmethod
    def of(cls, error: WritebackError) -> StoredProblem:
        return cls.from_record(problem_body(error))

    @property
    def code(self) -> str:
        return self.type.removeprefix(PROBLEM_TYPE_BASE)


class Resolution(StoredPart):
    """An operator's resolution of a change in the exception queue: plan it again, or discard it."""

    action: Literal["replan", "discard"]
    by: str
    at: datetime
    comment: str | None = None

    @field_serializer("at")
    def _timestamp(self, value: datetime) -> str:
        return value.isoformat()
