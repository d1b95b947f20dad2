"""Human decisions on a change waiting for approval: approve, reject, cancel.

A decision is recorded first (record + lineage in one transaction: who, how, a hash of the comment), then the
orchestration is woken with an ``approval`` event carrying the new state. A decision repeated by the same person is
answered again and wakes the orchestration again (an event lost between the two steps is recovered by the retry;
otherwise the deadline timer finds the state and moves on). The approver must not be the requester.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from shared.app.approval_links import ApprovalRound
from shared.app.journal import ChangeJournal, Step, utcnow
from shared.core.canonical import canonical_hash
from shared.core.errors import ForbiddenError, StateConflictError
from shared.core.models import ChangeRecord, ChangeStatus, Principal
from shared.core.ports import SweepState
from shared.core.record_parts import LINK_ACTOR, ApprovalState, StoredProblem

Decision = Literal["approve", "reject"]


class SelfApprovalError(ForbiddenError):
    code = "self-approval"
    title = "The requester cannot approve their own change"


class RejectedByApproverError(ForbiddenError):
    code = "rejected-by-approver"
    title = "Rejected by an approver"


class LinkClaims(Protocol):
    @property
    def change_id(self) -> str: ...
    @property
    def decision(self) -> Decision: ...
    @property
    def expires_at(self) -> datetime: ...
    @property
    def nonce(self) -> str: ...
    @property
    def round(self) -> ApprovalRound | None: ...


class StaleApprovalLinkError(StateConflictError):
    code = "stale-approval-link"
    title = "The link is for another round of approval"


class LinkVerifier(Protocol):
    def verify(self, token: str, *, change_id: str | None = None) -> LinkClaims: ...


class NonceStore(Protocol):
    def use(self, nonce: str, change_id: str, expires_at: datetime) -> None: ...


@dataclass(frozen=True)
class ApprovalLinks:
    """What the signed-callback path needs: the link verifier and the single-use nonce store."""

    signer: LinkVerifier
    nonces: NonceStore


@dataclass(frozen=True)
class Approver:
    """Who decided: a signed-in principal (``via="api"``), or the holder of a signed link (``via="callback"``): a
    verified identity when the holder also sent a valid token, else ``LINK_ACTOR`` with the name they gave as
    ``claimed`` (never taken as a person: not for separation of duties, not as the Provenance's verifier)."""

    id: str
    name: str | None
    via: Literal["api", "callback"]
    claimed: str | None = None
    app_itself: str | None = None  # the app id, when an app decides as itself (no person)

    @classmethod
    def of(cls, principal: Principal, via: Literal["api", "callback"] = "api") -> Approver:
        app_itself = principal.app_id if principal.user_id is None else None
        return cls(principal.actor, principal.display_name, via, app_itself=app_itself)

    @classmethod
    def link_holder(cls, claimed: str | None, principal: Principal | None) -> Approver:
        if principal is not None:
            return replace(cls.of(principal, "callback"), claimed=claimed)
        return cls(LINK_ACTOR, None, "callback", claimed)


def requester_id(record: ChangeRecord) -> str:
    return record.requested_by.actor


def round_of(record: ChangeRecord) -> ApprovalRound:
    """The approval round the change is in. A change that started waiting before rounds were recorded gets the
    round its diff gives (sequence 1), the same for signing and checking."""
    approval = record.approval or ApprovalState()
    diff = record.plan.diff if record.plan else []
    return ApprovalRound(approval.round or 1, record.retries, approval.diff_hash or canonical_hash(diff))


def same_round(claimed: ApprovalRound | None, current: ApprovalRound) -> bool:
    return (
        claimed is not None
        and claimed.sequence == current.sequence
        and claimed.retries == current.retries
        and hmac.compare_digest(claimed.diff_hash, current.diff_hash[: len(claimed.diff_hash)])
    )


def _comment_hash(comment: str | None) -> str | None:
    return hashlib.sha256(comment.encode("utf-8")).hexdigest() if comment else None


class ApprovalService:
    def __init__(
        self,
        journal: ChangeJournal,
        *,
        sweep_state: SweepState | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.journal = journal
        self.sweep_state = sweep_state
        self._clock = clock

    def decide(self, change_id: str, decision: Decision, approver: Approver, comment: str | None) -> ChangeRecord:
        record = self.journal.load(change_id, fresh=True)
        wanted = "approved" if decision == "approve" else "rejected"
        approval = record.approval or ApprovalState()
        if record.status is not ChangeStatus.AWAITING_APPROVAL:
            if approval.decided_by == approver.id and approval.decision == wanted:
                return record
            raise StateConflictError(f"The change is {record.status.value}, not awaiting approval")
        return self._record(record, decision, approver, comment)

    def decide_by_link(
        self, claims: LinkClaims, approver: Approver, comment: str | None, use_nonce: Callable[[], None]
    ) -> ChangeRecord:
        """A decision through a signed link: only for the round the link was issued for. The nonce is spent only
        once the link is known to fit the change as it stands (a refused link changes nothing)."""
        record = self.journal.load(claims.change_id, fresh=True)
        if record.status is not ChangeStatus.AWAITING_APPROVAL:
            raise StateConflictError(f"The change is {record.status.value}, not awaiting approval")
        if not same_round(claims.round, round_of(record)):
            raise StaleApprovalLinkError(
                "This link was issued for another round of approval of this change (before it was planned again or "
                "retried); use the link of the latest notification"
            )
        use_nonce()
        return self._record(record, claims.decision, approver, comment)

    def _record(
        self, record: ChangeRecord, decision: Decision, approver: Approver, comment: str | None
    ) -> ChangeRecord:
        change_id = record.change_id
        wanted = "approved" if decision == "approve" else "rejected"
        approval = record.approval or ApprovalState()
        if approver.id == requester_id(record) or approver.app_itself == record.requested_by.app_id:
            raise SelfApprovalError(
                "An approver must be someone other than the requester, and not the requesting app acting as itself"
            )
        decided = approval.model_copy(
            update={
                "decision": wanted,
                "decided_by": approver.id,
                "decided_by_name": approver.name,
                "claimed_by": approver.claimed,
                "decided_at": self._clock(),
                "via": approver.via,
                "comment": comment,
            }
        )
        details: dict[str, Any] = {"approver": approver.id, "via": approver.via, "commentHash": _comment_hash(comment)}
        if approver.via == "callback":
            details |= {"round": round_of(record).sequence, "nameClaimed": approver.claimed is not None}
        if decision == "approve":
            if self.sweep_state is not None:
                # Its id is older than the outbox sweeper's key range: named, so that the sweeper notices if the
                # change stops while writing.
                self.sweep_state.mark_pending(change_id, self._clock())
            steps = [Step("approved", details, actor=approver.id), Step("writing", {})]
            return self.journal.record(record, steps, status=ChangeStatus.WRITING, approval=decided)
        error = StoredProblem.of(RejectedByApproverError("An approver rejected this change"))
        return self.journal.record(
            record,
            [Step("rejected", details, actor=approver.id)],
            status=ChangeStatus.REJECTED,
            approval=decided,
            error=error,
        )

    def cancel(self, change_id: str, principal: Principal, *, as_operator: bool) -> ChangeRecord:
        record = self.journal.load(change_id, fresh=True)
        if not as_operator and requester_id(record) != principal.actor:
            raise ForbiddenError("Only the requester or an operator can cancel a change")
        if record.status is ChangeStatus.CANCELLED:
            return record
        if record.status is not ChangeStatus.AWAITING_APPROVAL:
            raise StateConflictError(
                f"The change is {record.status.value}; only a change awaiting approval can be cancelled"
            )
        actor = principal.actor
        approval = (record.approval or ApprovalState()).model_copy(
            update={"decision": "cancelled", "decided_by": actor, "decided_at": self._clock()}
        )
        return self.journal.record(
            record, [Step("cancelled", {"by": actor}, actor=actor)], status=ChangeStatus.CANCELLED, approval=approval
        )
