"""The operations API, free of Azure Functions: retry a change, resolve a conflict, replay many.

``orchestrators/operations_api.py`` only translates between the host's HTTP types and these answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.api.access import Access
from shared.api.caller_identity import ROLE_APPROVE, ROLE_OPERATE, require_role
from shared.api.requests import ReplayRequest, ResolveRequest, parse_body, state_changing_body
from shared.api.responses import ApiResponse, answer, still_running
from shared.api.status_view import status_body
from shared.app.operations import OperationsService, ReplayFilter
from shared.core.errors import Issue, RequestError
from shared.core.models import ChangeStatus


class OperationsApi:
    def __init__(self, access: Access, operations: OperationsService) -> None:
        self._access = access
        self._operations = operations

    def retry(self, headers: Mapping[str, str], change_id: str, body: bytes, base_url: str) -> ApiResponse:
        """Bodiless (a body is checked, then ignored)."""

        def action() -> ApiResponse:
            principal = self._access.acting(headers, base_url)
            state_changing_body(headers, body)
            require_role(principal, ROLE_OPERATE)
            self._access.reviewed(principal, change_id)
            return still_running(status_body(self._operations.retry(change_id, principal.actor), base_url))

        return answer(action, f"/api/v1/changes/{change_id}/retry")

    def resolve(self, headers: Mapping[str, str], change_id: str, body: bytes, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._access.acting(headers, base_url)
            require_role(principal, ROLE_APPROVE)
            self._access.reviewed(principal, change_id)
            request = parse_body(ResolveRequest, state_changing_body(headers, body), what="a valid resolution")
            if request.action == "discard":
                record = self._operations.discard(change_id, principal.actor, comment=request.comment)
                return ApiResponse(200, status_body(record, base_url))
            record = self._operations.retry(change_id, principal.actor, replan=True, comment=request.comment)
            return still_running(status_body(record, base_url))

        return answer(action, f"/api/v1/changes/{change_id}/resolve")

    def replay(self, headers: Mapping[str, str], body: bytes, base_url: str) -> ApiResponse:
        def action() -> ApiResponse:
            principal = self._access.acting(headers, base_url)
            require_role(principal, ROLE_OPERATE)
            request = parse_body(ReplayRequest, state_changing_body(headers, body), what="a valid replay request")
            scope = self._access.scope(principal)
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
            result = self._operations.replay(where, principal.actor, dry_run=request.dry_run, limit=request.limit)
            return ApiResponse(200, {"dryRun": request.dry_run, **result})

        return answer(action, "/api/v1/changes/replay")
