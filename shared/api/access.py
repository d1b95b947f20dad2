"""Who may see and decide what: the caller authenticated, and a change found only where the caller may see it.

- A person with ``Writeback.Submit`` sees the changes they submitted (through any app).
- An app acting as itself (an app-only token, no person) with ``Writeback.Submit`` sees its app's changes.
- Audit, Approve and Operate see the changes of the targets the policy's reviewer scope gives them (all targets
  when it names none); deciding (approve, reject, resolve, retry, an operator's cancel) needs that scope too.
- Nobody without a role sees anything.
A change the caller may not see is answered as not found, so its existence is not revealed.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.api.caller_identity import (
    ROLE_APPROVE,
    ROLE_AUDIT,
    ROLE_OPERATE,
    ROLE_SUBMIT,
    SESSION,
    Authenticator,
    require_role,
)
from shared.app.journal import ChangeJournal
from shared.core.errors import ForbiddenError, NotFoundError
from shared.core.models import ChangeRecord, Principal
from shared.core.policy import Policy

READ_ROLES = (ROLE_AUDIT, ROLE_APPROVE, ROLE_OPERATE)


class Access:
    def __init__(self, authenticator: Authenticator, journal: ChangeJournal, policy: Policy) -> None:
        self._authenticator = authenticator
        self._journal = journal
        self._policy = policy

    def caller(self, headers: Mapping[str, str]) -> Principal:
        return self._authenticator.authenticate(headers)

    def acting(self, headers: Mapping[str, str], base_url: str) -> Principal:
        """The caller of a state-changing request. A person's browser session (a cookie) is refused (403) when the
        request comes from another origin: a cookie rides along on cross-site requests, a token does not."""
        principal = self.caller(headers)
        if principal.auth_type == SESSION and _cross_origin(headers, base_url):
            raise ForbiddenError("A signed-in session's change must come from this site, not from another origin")
        return principal

    def submitter(self, headers: Mapping[str, str], base_url: str) -> Principal:
        """The caller, allowed to submit: ``Writeback.Submit``, and for a person's browser session also an app
        registration the policy maps as a source (a session is for reviewing; apps submit)."""
        principal = self.acting(headers, base_url)
        require_role(principal, ROLE_SUBMIT)
        if principal.auth_type == SESSION and self._policy.source_for_app(principal.app_id) is None:
            raise ForbiddenError(
                "A person signed in to the site cannot submit changes: submit through an app (an access token), "
                "or map this app registration as a source in the policy"
            )
        return principal

    def scope(self, principal: Principal) -> frozenset[str] | None:
        """The targets a reviewer may see (None: all); empty for a principal without a reviewing role."""
        if not any(r in principal.roles for r in READ_ROLES):
            return frozenset()
        return self._policy.reviewer_targets(principal.app_id, principal.user_id)

    def record(self, principal: Principal, change_id: str) -> ChangeRecord:
        """The change as stored now, when the caller may see it; NotFoundError otherwise."""
        record = self._journal.store.get(change_id)
        if record is None or not (self._reviews(principal, record) or _submitted(principal, record)):
            raise NotFoundError(f"change {change_id} not found")
        return record

    def reviewed(self, principal: Principal, change_id: str) -> ChangeRecord:
        """The change, when it is within the caller's reviewer scope (to approve, resolve, retry it as a reviewer or
        operator); NotFoundError otherwise (or when they may not see it at all)."""
        record = self.record(principal, change_id)
        if not self._reviews(principal, record):
            raise ForbiddenError("The change is outside the targets you review")
        return record

    def _reviews(self, principal: Principal, record: ChangeRecord) -> bool:
        if not any(r in principal.roles for r in READ_ROLES):
            return False
        scope = self.scope(principal)
        return scope is None or record.target in scope


def _cross_origin(headers: Mapping[str, str], base_url: str) -> bool:
    """From another origin, by the browser's own account: ``Sec-Fetch-Site`` (``same-origin`` and ``none``, a
    typed URL, are ours), else ``Origin`` against the site's."""
    lowered = {k.lower(): v for k, v in headers.items()}
    site = lowered.get("sec-fetch-site", "").strip().lower()
    if site:
        return site not in ("same-origin", "none")
    origin = lowered.get("origin", "").strip().lower().rstrip("/")
    return bool(origin) and origin != base_url.strip().lower().rstrip("/")


def _submitted(principal: Principal, record: ChangeRecord) -> bool:
    """The caller submitted it: the same person, or the app itself when no person is acting."""
    if ROLE_SUBMIT not in principal.roles:
        return False
    if principal.user_id is not None:
        return record.requested_by.user_id == principal.user_id
    return record.requested_by.app_id == principal.app_id
