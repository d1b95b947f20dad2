"""The decision API, free of Azure Functions: approve or reject, cancel, and the signed callback links.

Each method answers the ``ApiResponse`` and the event that wakes the change's orchestration (None when nothing was
decided); ``orchestrators/approvals_api.py`` raises that event after the decision is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shared.api.access import Access
from shared.api.caller_identity import ROLE_APPROVE, ROLE_OPERATE, ROLE_SUBMIT, require_role
from shared.api.requests import ApprovalRequest, CallbackBody, parse_body, state_changing_body
from shared.api.responses import ApiResponse, answer, change_answer
from shared.api.status_view import status_body
from shared.app.approval_links import CALLBACK_PATH, TOKEN_HEADER
from shared.app.approvals import ApprovalLinks, ApprovalService, Approver
from shared.core.errors import GoneError, Issue, NotFoundError, RequestError
from shared.core.models import ChangeRecord, Principal

WakeUp = dict[str, str] | None


def _decided(record: ChangeRecord, base_url: str) -> tuple[ApiResponse, WakeUp]:
    wake = {"changeId": record.change_id, "status": record.status.value}
    return change_answer(status_body(record, base_url), terminal=record.status.is_terminal), wake


def _answer_waking(action: Callable[[], tuple[ApiResponse, WakeUp]], instance: str) -> tuple[ApiResponse, WakeUp]:
    wake: list[WakeUp] = []

    def run() -> ApiResponse:
        response, event = action()
        wake.append(event)
        return response

    response = answer(run, instance)
    return response, (wake[0] if wake else None)


class ApprovalsApi:
    def __init__(self, access: Access, approvals: ApprovalService, links: ApprovalLinks | None) -> None:
        self._access = access
        self._approvals = approvals
        self._links = links

    def decide_approval(
        self, headers: Mapping[str, str], change_id: str, body: bytes, base_url: str
    ) -> tuple[ApiResponse, WakeUp]:
        """``POST /changes/{id}/approval``."""

        def action() -> tuple[ApiResponse, WakeUp]:
            principal = self._access.acting(headers, base_url)
            require_role(principal, ROLE_APPROVE)
            request = parse_body(ApprovalRequest, state_changing_body(headers, body), what="a valid approval decision")
            self._access.reviewed(principal, change_id)
            record = self._approvals.decide(change_id, request.decision, Approver.of(principal), request.comment)
            return _decided(record, base_url)

        return _answer_waking(action, f"/api/v1/changes/{change_id}/approval")

    def cancel(
        self, headers: Mapping[str, str], change_id: str, body: bytes, base_url: str
    ) -> tuple[ApiResponse, WakeUp]:
        """``POST /changes/{id}/cancel``: the requester, or an operator. Bodiless (a body is checked, then ignored)."""

        def action() -> tuple[ApiResponse, WakeUp]:
            principal = self._access.acting(headers, base_url)
            state_changing_body(headers, body)
            self._access.record(principal, change_id)
            as_operator = ROLE_OPERATE in principal.roles
            if as_operator:
                self._access.reviewed(principal, change_id)
            if not as_operator:
                require_role(principal, ROLE_SUBMIT)
            record = self._approvals.cancel(change_id, principal, as_operator=as_operator)
            return _decided(record, base_url)

        return _answer_waking(action, f"/api/v1/changes/{change_id}/cancel")

    def approval_callback(self, headers: Mapping[str, str], body: bytes, base_url: str) -> tuple[ApiResponse, WakeUp]:
        """``POST /callbacks/approval``: a signed, single-use approve / reject token, posted by a Power Automate or
        Logic Apps flow in the ``X-Approval-Token`` header (or the body's ``token``); a token in the URL is ignored."""

        def action() -> tuple[ApiResponse, WakeUp]:
            if self._links is None:
                raise NotFoundError("approval links are not configured")
            extra = parse_body(CallbackBody, state_changing_body(headers, body), what="a valid approval callback")
            token = _header(headers, TOKEN_HEADER) or extra.token
            if not token:
                raise RequestError(
                    "The approval token is missing",
                    issues=[Issue(TOKEN_HEADER, "required", "the notification's approveToken or rejectToken")],
                )
            claims = self._links.signer.verify(token)
            links = self._links
            approver = Approver.link_holder(extra.approver, self._bearer(headers))
            record = self._approvals.decide_by_link(
                claims,
                approver,
                extra.comment,
                lambda: links.nonces.use(claims.nonce, claims.change_id, claims.expires_at),
            )
            return _decided(record, base_url)

        return _answer_waking(action, CALLBACK_PATH)

    def _bearer(self, headers: Mapping[str, str]) -> Principal | None:
        """The identity of a link holder who also sent an Entra token, validated like any other (an invalid one is
        refused, not ignored); None without one. A name in the body is only ever recorded as claimed."""
        if not (_header(headers, "Authorization") or "").lower().startswith("bearer "):
            return None
        return self._access.caller(headers)

    def moved_callback(self, change_id: str) -> ApiResponse:
        """The callback's old path (a token in its query string): 410, saying where the callback went."""

        def refuse() -> ApiResponse:
            raise GoneError(
                f"The approval callback moved to POST {CALLBACK_PATH}, with the token in the {TOKEN_HEADER} header "
                "(or the JSON body's token), never in the URL; notifications carry callbackUrl, approveToken and "
                "rejectToken"
            )

        return answer(refuse, f"/api/v1/changes/{change_id}/approval/callback")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)
