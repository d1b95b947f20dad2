"""The change API, free of Azure Functions: submit a change, read its status and lineage, list the queues.

Each method authenticates, authorises, calls one service and answers an ``ApiResponse``; every error takes the
one problem+json path (``answer``). The HTTP functions in ``orchestrators/changes_api.py`` only translate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from typing import Any

from shared.api.access import READ_ROLES, Access
from shared.api.caller_identity import ROLE_AUDIT, ROLE_OPERATE, require_role
from shared.api.prefer import preference_applied, requested_wait
from shared.api.requests import state_changing_body
from shared.api.responses import ApiResponse, answer, change_answer, header, page_size, still_running
from shared.api.status_view import accepted_body, lineage_body, status_body
from shared.api.waiting import ChangeWaiter
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.core.errors import Issue, NotFoundError, RequestError, WritebackError
from shared.core.models import RESOURCE_REF, ChangeStatus
from shared.core.ports import IntakeLimiter
from shared.core.telemetry import (
    CHANGE_ID_ATTRIBUTE,
    change_span,
    changes_accepted,
    current_traceparent,
    inbound_traceparent,
)

VARY_PREFER = {"Vary": "Prefer"}
log = logging.getLogger("writeback.api")


class ChangesApi:
    def __init__(
        self,
        access: Access,
        intake: IntakeService,
        journal: ChangeJournal,
        *,
        known_targets: Collection[str],
        waiter: ChangeWaiter | None = None,
        limiter: IntakeLimiter | None = None,
    ) -> None:
        self._access = access
        self._intake = intake
        self._journal = journal
        self._known_targets = known_targets
        self._waiter = waiter or ChangeWaiter(journal.store.get, signals=journal.signals)
        self._limiter = limiter

    async def submit_and_wait(self, headers: Mapping[str, str], body: bytes, base_url: str) -> ApiResponse:
        """``submit``, then, with ``Prefer: wait=N``, the change's status as soon as it settles (within N s)."""
        response = await asyncio.to_thread(self.submit, headers, body, base_url)
        return await self._held(response, headers, base_url)

    async def get_change_and_wait(self, headers: Mapping[str, str], change_id: str, base_url: str) -> ApiResponse:
        """``get_change``, then, with ``Prefer: wait=N``, the status as soon as the change settles (within N s)."""
        response = await asyncio.to_thread(self.get_change, headers, change_id, base_url)
        return await self._held(response, headers, base_url)

    async def _held(self, response: ApiResponse, headers: Mapping[str, str], base_url: str) -> ApiResponse:
        """Hold a ``202`` for a running change until it ends (``200``) or waits for a person (``202``), or the
        caller's wait runs out (the ``202`` as it was). Any other answer goes back at once."""
        wait = requested_wait(headers)
        if wait is not None and response.status in (200, 202) and isinstance(response.body, dict):
            response.headers.update(preference_applied(wait))
            if response.status == 202 and response.body.get("status") != "awaiting_approval":
                try:
                    record = await self._waiter.until_settled(str(response.body["changeId"]), wait)
                except WritebackError as exc:
                    # The change is taken in: a failed status read ends the wait, not the answer (poll as usual).
                    log.info("a wait for change %s ended early: %s", response.body["changeId"], exc.code)
                    record = None
                if record is not None:
                    held = change_answer(status_body(record, base_url), terminal=record.status.is_terminal)
                    kept = {k: v for k, v in response.headers.items() if k not in ("Location", "Retry-After")}
                    held.headers.update(kept)
                    response = held
        response.headers.update(VARY_PREFER)
        return response

    def submit(self, headers: Mapping[str, str], body: bytes, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._access.submitter(headers, base_url)
            if self._limiter is not None:
                self._limiter.admit(principal.caller_key)
            state_changing_body(headers, body, limit=self._intake.max_body_bytes)
            caller_trace = inbound_traceparent(header(headers, "traceparent"))
            with change_span("writeback.intake", None, traceparent=caller_trace) as span:
                result = self._intake.submit(
                    principal, header(headers, "Idempotency-Key"), body, traceparent=current_traceparent()
                )
                span.set_attribute(CHANGE_ID_ATTRIBUTE, result.change.change_id)
                span.set_attribute("writeback.replayed", result.replayed)
            if not result.replayed:
                changes_accepted.add(1, {"writeback.target": result.change.target})
            response = still_running(accepted_body(result.change, base_url))
            if result.replayed:
                response.headers["Idempotent-Replayed"] = "true"
            return response

        return answer(action, "/api/v1/changes")

    def get_change(self, headers: Mapping[str, str], change_id: str, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            record = self._access.record(self._access.caller(headers), change_id)
            return change_answer(status_body(record, base_url), terminal=record.status.is_terminal)

        return answer(action, f"/api/v1/changes/{change_id}")

    def lineage(self, headers: Mapping[str, str], change_id: str) -> ApiResponse:
        def action() -> ApiResponse:
            self._access.record(self._access.caller(headers), change_id)
            return ApiResponse(200, lineage_body(change_id, self._journal.store.lineage(change_id)))

        return answer(action, f"/api/v1/changes/{change_id}/lineage")

    def list_changes(self, headers: Mapping[str, str], params: Mapping[str, str], base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._access.caller(headers)
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
            scope = self._access.scope(principal)
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
            page = self._journal.store.query(
                status=status,
                target=target,
                verified=verified,
                resource_type=params.get("resource") or None,
                page_size=page_size(params),
                continuation_token=params.get("continuationToken") or None,
            )
            items = [r for r in page.items if scope is None or r.target in scope]
            body: dict[str, Any] = {"items": [status_body(r, base_url) for r in items]}
            if page.continuation_token:
                body["continuationToken"] = page.continuation_token
            return ApiResponse(200, body)

        return answer(action, "/api/v1/changes")

    def resource_lineage(
        self, headers: Mapping[str, str], target: str, resource_type: str, resource_id: str, params: Mapping[str, str]
    ) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._access.caller(headers)
            require_role(principal, ROLE_AUDIT, ROLE_OPERATE)
            if not RESOURCE_REF.match(f"{resource_type}/{resource_id}"):
                raise RequestError(
                    "Not a FHIR resource type and id",
                    issues=[Issue("resourceType/id", "invalid", "a FHIR resource type and a FHIR id")],
                )
            if target not in self._known_targets:
                raise NotFoundError(f"unknown target {target!r}")
            scope = self._access.scope(principal)
            if scope is not None and target not in scope:
                raise NotFoundError(f"no lineage for {resource_type}/{resource_id} at {target}")
            page = self._journal.store.resource_history(
                target,
                resource_type,
                resource_id,
                page_size=page_size(params),
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

        return answer(action, f"/api/v1/lineage/{target}/{resource_type}/{resource_id}")
