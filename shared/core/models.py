"""Domain models: the change request a caller submits, the change record we keep, lineage events, principals.

Wire names are camelCase (the HTTP API and Table properties); Python names are snake_case.
Lineage events never carry PHI: element paths, hashes, versions, actors and outcomes only.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_serializer, field_validator, model_validator
from pydantic.alias_generators import to_camel

from shared.core.fhir_ids import RESOURCE_REF_RE, VERSION_ID_RE
from shared.core.record_parts import (
    ApprovalState,
    ChangePlan,
    ChangeResult,
    PayloadRef,
    Resolution,
    StoredPart,
    StoredProblem,
)

T = TypeVar("T")

RESOURCE_REF = RESOURCE_REF_RE


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Operation(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"


class ChangeStatus(StrEnum):
    ACCEPTED = "accepted"
    VALIDATING = "validating"
    AWAITING_APPROVAL = "awaiting_approval"
    WRITING = "writing"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    PLANNED = "planned"
    REJECTED = "rejected"
    CONFLICT = "conflict"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        ChangeStatus.COMPLETED,
        ChangeStatus.PLANNED,
        ChangeStatus.REJECTED,
        ChangeStatus.CONFLICT,
        ChangeStatus.FAILED,
        ChangeStatus.EXPIRED,
        ChangeStatus.CANCELLED,
    }
)


class Principal(WireModel):
    """Who called: the app (source system) and, when known, the signed-in user. Roles as granted."""

    app_id: str
    user_id: str | None = None
    display_name: str | None = None
    roles: list[str] = Field(default_factory=list)
    auth_type: str = "easyauth"

    @property
    def actor(self) -> str:
        """How lineage, decisions and separation of duties name this caller: the user, else the app as itself."""
        return self.user_id or f"app:{self.app_id}"

    @property
    def caller_key(self) -> str:
        """The scope of idempotency keys: one namespace per app (and user, when the app acts for one)."""
        return f"{self.app_id}|{self.user_id or ''}"


class PatchOperation(WireModel):
    """One RFC 6902 JSON Patch operation."""

    op: Literal["add", "remove", "replace", "move", "copy", "test"] = Field(
        description="The JSON Patch operation.", json_schema_extra={"x-ms-summary": "Operation"}
    )
    path: str = Field(
        description="A JSON pointer into the resource, e.g. /telecom/0/value.",
        json_schema_extra={"x-ms-summary": "Path"},
    )
    value: Any = Field(
        default=None,
        description="The value (any JSON) for add, replace and test.",
        json_schema_extra={"x-ms-summary": "Value"},
    )
    from_: str | None = Field(
        default=None,
        alias="from",
        description="The source JSON pointer for move and copy.",
        json_schema_extra={"x-ms-summary": "From", "x-ms-visibility": "advanced"},
    )

    @field_validator("path", "from_")
    @classmethod
    def _pointer(cls, v: str | None) -> str | None:
        if v is not None and v != "" and not v.startswith("/"):
            raise ValueError("must be a JSON pointer starting with '/'")
        return v

    @model_validator(mode="after")
    def _needs(self) -> PatchOperation:
        if self.op in ("move", "copy") and self.from_ is None:
            raise ValueError(f"'{self.op}' needs 'from'")
        if self.op in ("add", "replace", "test") and "value" not in self.model_fields_set:
            raise ValueError(f"'{self.op}' needs 'value'")
        return self

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.op in ("add", "replace", "test"):
            out["value"] = self.value
        if self.from_ is not None:
            out["from"] = self.from_
        return out


class ChangeRequest(WireModel):
    """A change to one FHIR R4 resource at one target. `resource` for create and update; `resourceRef` and `patch`
    (RFC 6902) for patch."""

    # The body of POST /api/v1/changes (DESIGN.md §4). The docstring and the fields' descriptions, summaries and
    # visibilities are what the OpenAPI document (and so a custom connector) shows.
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "target": "local-ehr",
                    "operation": "patch",
                    "resourceRef": "Patient/123",
                    "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0100"}],
                    "baseVersion": "3",
                    "reason": "Phone number confirmed by the patient",
                    "dryRun": True,
                }
            ]
        }
    )

    target: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
        description="The id of the target FHIR server (config/targets.yaml), e.g. local-ehr.",
        json_schema_extra={"x-ms-summary": "Target", "x-ms-visibility": "important"},
    )
    operation: Operation = Field(
        description="create, update or patch.",
        json_schema_extra={"x-ms-summary": "Operation", "x-ms-visibility": "important"},
    )
    resource: dict[str, Any] | None = Field(
        default=None,
        description="The whole FHIR R4 resource (with resourceType; with id for update).",
        json_schema_extra={"x-ms-summary": "Resource", "x-ms-visibility": "important"},
    )
    resource_ref: str | None = Field(
        default=None,
        description="ResourceType/id of the resource to patch.",
        # The document states the expression _ref checks; a Field pattern would check it twice, in another engine.
        json_schema_extra={"pattern": RESOURCE_REF.pattern, "x-ms-summary": "Resource reference"},
    )
    patch: list[PatchOperation] | None = Field(
        default=None,
        description="The JSON Patch operations (patch only; at least one).",
        json_schema_extra={"x-ms-summary": "Patch"},
    )
    base_version: str | None = Field(
        default=None,
        description=(
            'The version the caller read: W/"3", 3 or an opaque version id. When the target has moved on, the '
            "gateway merges non-overlapping changes or ends the change in conflict."
        ),
        json_schema_extra={"x-ms-summary": "Base version", "x-ms-visibility": "advanced"},
    )
    reason: str | None = Field(
        default=None,
        max_length=1024,
        description="Why the change is made (kept as a hash; goes into the Provenance).",
        json_schema_extra={"x-ms-summary": "Reason"},
    )
    dry_run: StrictBool = Field(
        default=False,
        description="Plan only: validate, diff and take the policy decision, then end in planned.",
        json_schema_extra={"x-ms-summary": "Dry run", "x-ms-visibility": "advanced"},
    )

    @field_validator("base_version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool):
            raise ValueError("must be a version id string or integer")
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            m = re.fullmatch(r'\s*(?:W/)?"?([^"]*)"?\s*', v)
            inner = m.group(1) if m else v
            if not VERSION_ID_RE.match(inner):
                raise ValueError("must be a FHIR version id (letters, digits, '-' and '.', at most 64)")
            return inner
        raise ValueError("must be a version id string or integer")

    @field_validator("resource_ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is not None and not RESOURCE_REF.match(v):
            raise ValueError("must look like 'ResourceType/id'")
        return v

    @model_validator(mode="after")
    def _shape(self) -> ChangeRequest:
        if self.operation in (Operation.CREATE, Operation.UPDATE):
            if self.resource is None:
                raise ValueError(f"'resource' is required for {self.operation.value}")
            if self.patch is not None:
                raise ValueError(f"'patch' is not allowed for {self.operation.value}")
            rtype = self.resource.get("resourceType")
            if not isinstance(rtype, str) or not rtype:
                raise ValueError("'resource.resourceType' is required")
            if self.operation is Operation.UPDATE and not isinstance(self.resource.get("id"), str):
                raise ValueError("'resource.id' is required for update")
            if self.resource_ref is not None:
                expected = f"{rtype}/{self.resource.get('id')}"
                if self.resource_ref != expected:
                    raise ValueError(f"'resourceRef' {self.resource_ref!r} does not match the resource ({expected})")
        else:
            if self.resource_ref is None:
                raise ValueError("'resourceRef' is required for patch")
            if not self.patch:
                raise ValueError("'patch' must be a non-empty list for patch")
            if self.resource is not None:
                raise ValueError("'resource' is not allowed for patch")
        return self

    @property
    def resource_type(self) -> str:
        if self.resource is not None:
            return str(self.resource["resourceType"])
        assert self.resource_ref is not None
        return self.resource_ref.split("/", 1)[0]

    @property
    def resource_id(self) -> str | None:
        if self.resource is not None:
            rid = self.resource.get("id")
            return rid if isinstance(rid, str) else None
        assert self.resource_ref is not None
        return self.resource_ref.split("/", 1)[1]


class ChangeRecord(WireModel):
    """The state of one change. Stored as the ``record`` row of the change's partition."""

    change_id: str
    status: ChangeStatus
    target: str
    operation: Operation
    resource_type: str
    resource_id: str | None = None
    requested_by: Principal
    submitted_at: datetime
    updated_at: datetime
    request_hash: str
    payload: PayloadRef
    reason_hash: str | None = None
    dry_run: bool = False
    base_version: str | None = None
    enqueued: bool = False
    retries: int = 0
    replan: bool = False
    sequence: int = 0
    plan: ChangePlan | None = None
    approval: ApprovalState | None = None
    result: ChangeResult | None = None
    error: StoredProblem | None = None
    resolution: Resolution | None = None
    # When the request body, planned resource, diff values and comments were purged (WRITEBACK_PAYLOAD_RETENTION_DAYS
    # after the change ended); the change then keeps its lineage (paths, hashes, versions, actors) and cannot run again.
    payload_purged_at: datetime | None = None
    etag: str | None = Field(default=None, exclude=True)

    @field_serializer("plan", "approval", "result", "error", "resolution")
    def _part(self, part: StoredPart | None) -> dict[str, Any] | None:
        return part.to_record() if part is not None else None

    @property
    def resource_ref(self) -> str | None:
        return f"{self.resource_type}/{self.resource_id}" if self.resource_id else None


class LineageEvent(WireModel):
    """One step in a change's life. Insert-only; ``sequence`` orders events within a change."""

    change_id: str
    sequence: int
    event: str
    status: ChangeStatus
    at: datetime
    actor: str
    details: dict[str, Any] = Field(default_factory=dict)


class IdempotencyState(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"


class IdempotencyRecord(WireModel):
    """One claimed idempotency key, scoped to a caller."""

    caller: str
    key: str
    fingerprint: str
    change_id: str
    state: IdempotencyState = IdempotencyState.PENDING
    created_at: datetime
    expires_at: datetime
    response_status: int | None = None
    etag: str | None = Field(default=None, exclude=True)


class ResourceChange(WireModel):
    """One row of the resource index: a change that touched (target, resource type, id)."""

    target: str
    resource_type: str
    resource_id: str
    change_id: str
    at: datetime


class PendingChange(WireModel):
    """A change put back to ``accepted`` with an id older than the outbox sweeper's window (an operator's retry, an
    intake resumed late), so the sweeper checks it by name until it has moved on."""

    change_id: str
    marked_at: datetime
    etag: str | None = Field(default=None, exclude=True)


class DuePurge(WireModel):
    """A change the payload purge looks at again by name once ``due`` has passed: it was still running, or had ended
    too recently, when the purge read its id."""

    change_id: str
    due: datetime
    key: str = Field(default="", exclude=True)


class RetentionCursor(WireModel):
    """How far the payload purge has read the changes table: the lowest change id it reads next.

    ``full_pass_below`` is set while the first pass over the whole table is under way (the changes kept before the
    purge existed, including ids that tell no time): that pass handles ids taken before this time and ids that tell
    none, and when it ends the key-range reads take over from ``change_id_floor(full_pass_below)``."""

    next_id: str = ""
    full_pass_below: datetime | None = None


class ChangeMessage(WireModel):
    """What travels on the queue: ids only, never a resource body."""

    change_id: str
    target: str
    kind: Literal["change", "retry"] = "change"
    attempt: int = 0
    traceparent: str | None = None


class Page(BaseModel, Generic[T]):
    """A page of results and the opaque token for the next one."""

    items: list[T]
    continuation_token: str | None = None
