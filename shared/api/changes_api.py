"""The HTTP API's behaviour, free of Azure Functions: authenticate, authorise, call one service, answer.

Every method returns an ``ApiResponse``; every ``WritebackError`` becomes problem+json with its status, so bad
input is always a 4xx naming the field. Anything unexpected is logged (ids only) and answered with a bare 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.api.caller_identity import ROLE_APPROVE, ROLE_AUDIT, ROLE_OPERATE, ROLE_SUBMIT, require_role
from shared.api.responses import ApiResponse, problem
from shared.api.status_view import RETRY_AFTER_SECONDS, accepted_body, lineage_body, status_body
from shared.app.approvals import ApprovalLinks, ApprovalService, Approver
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.app.operations import OperationsService, ReplayFilter
from shared.core.errors import Issue, NotFoundError, PayloadTooLargeError, RequestError, WritebackError
from shared.core.models import RESOURCE_REF, ChangeRecord, ChangeStatus, Principal
from shared.core.policy import Policy
from shared.core.problems import request_error_from
from shared.core.telemetry import CHANGE_ID_ATTRIBUTE, change_span, changes_accepted, current_traceparent

log = logging.getLogger("writeback.api")

READ_ROLES = (ROLE_AUDIT, ROLE_APPROVE, ROLE_OPERATE)
WakeUp = dict[str, str] | None
MAX_PAGE_SIZE = 200


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


class ChangesApi:
    def __init__(
        self,
        *,
        authenticate: Callable[[Mapping[str, str]], Principal],
        intake: Callable[[], IntakeService],
        journal: Callable[[], ChangeJournal],
        approvals: Callable[[], ApprovalService],
        policy: Callable[[], Policy],
        max_body_bytes: int,
        approval_links: Callable[[], ApprovalLinks] | None = None,
        operations: Callable[[], OperationsService] | None = None,
        known_targets: Callable[[], Collection[str]] | None = None,
    ) -> None:
        self._operations = operations
        self._known_targets = known_targets
        self._authenticate = authenticate
        self._intake = intake
        self._journal = journal
        self._approvals = approvals
        self._policy = policy
        self._links = approval_links
        self.max_body_bytes = max_body_bytes

    def _guard(self, action: Callable[[], ApiResponse], instance: str) -> ApiResponse:
        try:
            return action()
        except WritebackError as exc:
            return problem(exc, instance=instance)
        except Exception:
            log.exception("unexpected error answering %s", instance)
            return ApiResponse(500, {"type": "about:blank", "title": "Internal error", "status": 500})

    # --- writes ----------------------------------------------------------------------------------------------

    def content_too_large(self, headers: Mapping[str, str]) -> bool:
        length = _header(headers, "Content-Length")
        return bool(length and length.isdigit() and int(length) > self.max_body_bytes)

    def submit(self, headers: Mapping[str, str], body: bytes, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            require_role(principal, ROLE_SUBMIT)
            if self.content_too_large(headers) or len(body) > self.max_body_bytes:
                raise PayloadTooLargeError(f"The request body exceeds {self.max_body_bytes} bytes")
            with change_span("writeback.intake", None, traceparent=_header(headers, "traceparent")) as span:
                result = self._intake().submit(
                    principal, _header(headers, "Idempotency-Key"), body, traceparent=current_traceparent()
                )
                span.set_attribute(CHANGE_ID_ATTRIBUTE, result.change.change_id)
                span.set_attribute("writeback.replayed", result.replayed)
            if not result.replayed:
                changes_accepted.add(1, {"writeback.target": result.change.target})
            answer = accepted_body(result.change, base_url)
            response_headers = {"Location": answer["links"]["self"], "Retry-After": str(RETRY_AFTER_SECONDS)}
            if result.replayed:
                response_headers["Idempotent-Replayed"] = "true"
            return ApiResponse(202, answer, response_headers)

        return self._guard(action, "/api/v1/changes")

    # --- reads -----------------------------------------------------------------------------------------------

    def _scope(self, principal: Principal) -> frozenset[str] | None:
        """The targets a reviewer may see (None: all); empty for a principal without a reviewing role."""
        if not any(r in principal.roles for r in READ_ROLES):
            return frozenset()
        return self._policy().reviewer_targets(principal.app_id, principal.user_id)

    def _visible(self, principal: Principal, record: ChangeRecord) -> None:
        """The submitting app sees its own changes; Audit, Approve and Operate those of their targets."""
        if record.requested_by.app_id == principal.app_id:
            return
        scope = self._scope(principal)
        if scope is None or record.target in scope:
            return
        raise NotFoundError(f"change {record.change_id} not found")

    def _record(self, principal: Principal, change_id: str) -> ChangeRecord:
        record = self._journal().store.get(change_id)
        if record is None:
            raise NotFoundError(f"change {change_id} not found")
        self._visible(principal, record)
        return record

    def get_change(self, headers: Mapping[str, str], change_id: str, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            record = self._record(principal, change_id)
            body = status_body(record, base_url)
            if record.status.is_terminal:
                return ApiResponse(200, body)
            return ApiResponse(202, body, {"Location": body["links"]["self"], "Retry-After": str(RETRY_AFTER_SECONDS)})

        return self._guard(action, f"/api/v1/changes/{change_id}")

    def lineage(self, headers: Mapping[str, str], change_id: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            self._record(principal, change_id)
            return ApiResponse(200, lineage_body(change_id, self._journal().store.lineage(change_id)))

        return self._guard(action, f"/api/v1/changes/{change_id}/lineage")

    def list_changes(self, headers: Mapping[str, str], params: Mapping[str, str], base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            require_role(principal, *READ_ROLES)
            status = None
            if params.get("status"):
                try:
                    status = ChangeStatus(params["status"])
                except ValueError:
                    raise RequestError(
                        "Unknown status filter",
                        issues=[Issue("status", "invalid", f"one of {', '.join(s.value for s in ChangeStatus)}")],
                    ) from None
            scope = self._scope(principal)
            target = params.get("target") or None
            if scope is not None and target is not None and target not in scope:
                return ApiResponse(200, {"items": []})
            verified = None
            if params.get("verified"):
                if params["verified"] not in ("true", "false"):
                    raise RequestError(
                        "verified is true or false", issues=[Issue("verified", "invalid", "true or false")]
                    )
                verified = params["verified"] == "true"
            page = self._journal().store.query(
                status=status,
                target=target,
                verified=verified,
                resource_type=params.get("resource") or None,
                page_size=_page_size(params),
                continuation_token=params.get("continuationToken") or None,
            )
            items = [r for r in page.items if scope is None or r.target in scope]
            body: dict[str, Any] = {"items": [status_body(r, base_url) for r in items]}
            if page.continuation_token:
                body["continuationToken"] = page.continuation_token
            return ApiResponse(200, body)

        return self._guard(action, "/api/v1/changes")

    def resource_lineage(
        self, headers: Mapping[str, str], target: str, resource_type: str, resource_id: str, params: Mapping[str, str]
    ) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            require_role(principal, ROLE_AUDIT, ROLE_OPERATE)
            if not RESOURCE_REF.match(f"{resource_type}/{resource_id}"):
                raise RequestError(
                    "Not a FHIR resource type and id",
                    issues=[Issue("resourceType/id", "invalid", "a FHIR resource type and a FHIR id")],
                )
            if self._known_targets is not None and target not in self._known_targets():
                raise NotFoundError(f"unknown target {target!r}")
            scope = self._scope(principal)
            if scope is not None and target not in scope:
                raise NotFoundError(f"no lineage for {resource_type}/{resource_id} at {target}")
            page = self._journal().store.resource_history(
                target,
                resource_type,
                resource_id,
                page_size=_page_size(params),
                continuation_token=params.get("continuationToken") or None,
            )
            body: dict[str, Any] = {
                "target": target,
                "resourceRef": f"{resource_type}/{resource_id}",
                "changes": [{"changeId": e.change_id, "at": e.at.isoformat()} for e in page.items],
            }
            if page.continuation_token:
                body["continuationToken"] = page.continuation_token
            return ApiResponse(200, body)

        return self._guard(action, f"/api/v1/lineage/{target}/{resource_type}/{resource_id}")

    # --- approvals -------------------------------------------------------------------------------------------

    def _decision_response(self, record: ChangeRecord, base_url: str) -> tuple[ApiResponse, WakeUp]:
        body = status_body(record, base_url)
        wake = {"changeId": record.change_id, "status": record.status.value}
        if record.status.is_terminal:
            return ApiResponse(200, body), wake
        headers = {"Location": body["links"]["self"], "Retry-After": str(RETRY_AFTER_SECONDS)}
        return ApiResponse(202, body, headers), wake

    def _guard_wake(
        self, action: Callable[[], tuple[ApiResponse, WakeUp]], instance: str
    ) -> tuple[ApiResponse, WakeUp]:
        wake: list[WakeUp] = []

        def run() -> ApiResponse:
            response, event = action()
            wake.append(event)
            return response

        response = self._guard(run, instance)
        return response, (wake[0] if wake else None)

    def decide_approval(
        self, headers: Mapping[str, str], change_id: str, body: bytes, base_url: str
    ) -> tuple[ApiResponse, WakeUp]:
        """``POST /changes/{id}/approval``; the second value is the event that wakes the orchestration."""

        def action() -> tuple[ApiResponse, WakeUp]:
            principal = self._authenticate(headers)
            require_role(principal, ROLE_APPROVE)
            request = _approval_request(body)
            self._record(principal, change_id)
            record = self._approvals().decide(change_id, request.decision, Approver.of(principal), request.comment)
            return self._decision_response(record, base_url)

        return self._guard_wake(action, f"/api/v1/changes/{change_id}/approval")

    def cancel(self, headers: Mapping[str, str], change_id: str, base_url: str) -> tuple[ApiResponse, WakeUp]:
        def action() -> tuple[ApiResponse, WakeUp]:
            principal = self._authenticate(headers)
            self._record(principal, change_id)
            as_operator = ROLE_OPERATE in principal.roles
            if not as_operator:
                require_role(principal, ROLE_SUBMIT)
            record = self._approvals().cancel(change_id, principal, as_operator=as_operator)
            return self._decision_response(record, base_url)

        return self._guard_wake(action, f"/api/v1/changes/{change_id}/cancel")

    def approval_callback(
        self, change_id: str, token: str | None, body: bytes, base_url: str
    ) -> tuple[ApiResponse, WakeUp]:
        """A signed, single-use approve / reject link, called by a Power Automate or Logic Apps flow."""

        def action() -> tuple[ApiResponse, WakeUp]:
            if self._links is None:
                raise NotFoundError("approval links are not configured")
            if not token:
                raise RequestError(
                    "The token is missing", issues=[Issue("token", "required", "the signed link's token")]
                )
            links = self._links()
            claims = links.signer.verify(token, change_id=change_id)
            extra = _callback_body(body)
            links.nonces.use(claims.nonce, claims.change_id, claims.expires_at)
            approver = Approver(extra.approver or "approval-flow", None, "callback")
            record = self._approvals().decide(change_id, claims.decision, approver, extra.comment)
            return self._decision_response(record, base_url)

        return self._guard_wake(action, f"/api/v1/changes/{change_id}/approval/callback")

    # --- operations ------------------------------------------------------------------------------------------

    def _ops(self) -> OperationsService:
        if self._operations is None:
            raise NotFoundError("operations are not configured")
        return self._operations()

    def retry(self, headers: Mapping[str, str], change_id: str, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            require_role(principal, ROLE_OPERATE)
            self._record(principal, change_id)
            record = self._ops().retry(change_id, _actor(principal))
            body = status_body(record, base_url)
            return ApiResponse(202, body, {"Location": body["links"]["self"], "Retry-After": str(RETRY_AFTER_SECONDS)})

        return self._guard(action, f"/api/v1/changes/{change_id}/retry")

    def resolve(self, headers: Mapping[str, str], change_id: str, body: bytes, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            require_role(principal, ROLE_APPROVE)
            self._record(principal, change_id)
            try:
                request = ResolveRequest.model_validate_json(body or b"{}")
            except ValidationError as exc:
                raise request_error_from(exc, detail="The body is not a valid resolution") from None
            if request.action == "discard":
                return ApiResponse(200, status_body(self._ops().discard(change_id, _actor(principal)), base_url))
            record = self._ops().retry(change_id, _actor(principal), replan=True)
            out = status_body(record, base_url)
            return ApiResponse(202, out, {"Location": out["links"]["self"], "Retry-After": str(RETRY_AFTER_SECONDS)})

        return self._guard(action, f"/api/v1/changes/{change_id}/resolve")

    def replay(self, headers: Mapping[str, str], body: bytes) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._authenticate(headers)
            require_role(principal, ROLE_OPERATE)
            try:
                request = ReplayRequest.model_validate_json(body or b"{}")
            except ValidationError as exc:
                raise request_error_from(exc, detail="The body is not a valid replay request") from None
            scope = self._scope(principal)
            if scope is not None and (request.target is None or request.target not in scope):
                raise RequestError(
                    "Name a target you operate", issues=[Issue("/target", "required", "a target in your scope")]
                )
            where = ReplayFilter(
                status=ChangeStatus(request.status),
                target=request.target,
                error_code=request.error_code,
                since=request.since,
                until=request.until,
            )
            result = self._ops().replay(where, _actor(principal), dry_run=request.dry_run, limit=request.limit)
            return ApiResponse(200, {"dryRun": request.dry_run, **result})

        return self._guard(action, "/api/v1/changes/replay")


class ApprovalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=2000)


class CallbackBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    comment: str | None = Field(default=None, max_length=2000)
    approver: str | None = Field(default=None, max_length=256)


def _approval_request(body: bytes) -> ApprovalRequest:
    try:
        return ApprovalRequest.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise request_error_from(exc, detail="The body is not a valid approval decision") from None


def _callback_body(body: bytes) -> CallbackBody:
    if not body.strip():
        return CallbackBody()
    try:
        return CallbackBody.model_validate_json(body)
    except ValidationError as exc:
        raise request_error_from(exc, detail="The body is not valid") from None


def _page_size(params: Mapping[str, str]) -> int:
    raw = params.get("pageSize") or "50"
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise RequestError(
            "pageSize is out of range",
            issues=[Issue("pageSize", "invalid", f"a whole number from 1 to {MAX_PAGE_SIZE}")],
        )
    return int(raw)


def _actor(principal: Principal) -> str:
    return principal.user_id or f"app:{principal.app_id}"


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    action: Literal["replan", "discard"]
    comment: str | None = Field(default=None, max_length=2000)


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Literal["failed", "conflict", "expired"] = "failed"
    target: str | None = Field(default=None, max_length=64)
    error_code: str | None = Field(default=None, alias="errorCode", max_length=100)
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = Field(default=True, alias="dryRun")
    limit: int = Field(default=100, ge=1, le=1000)
