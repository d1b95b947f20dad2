"""Tell approvers a change waits for them: the webhook notification with signed approve / reject links."""

from __future__ import annotations

from typing import Any

from shared.app.approval_links import CALLBACK_PATH, ApprovalLinkSigner
from shared.app.approvals import round_of
from shared.app.journal import ChangeJournal, Step
from shared.app.notifications import build_notification
from shared.core.links import change_links
from shared.core.models import ChangeStatus
from shared.core.ports import ApprovalNotifier


class ApprovalNotices:
    def __init__(
        self, journal: ChangeJournal, notifier: ApprovalNotifier, signer: ApprovalLinkSigner, public_base_url: str
    ) -> None:
        self.journal = journal
        self.notifier = notifier
        self.signer = signer
        self.base_url = public_base_url.rstrip("/")

    def send(self, change_id: str, kind: str) -> dict[str, Any]:
        record = self.journal.load(change_id, expect={ChangeStatus.AWAITING_APPROVAL})
        if record.status is not ChangeStatus.AWAITING_APPROVAL:
            return {"changeId": change_id, "status": record.status.value, "notified": False}
        if record.approval is None or record.approval.expires_at is None:
            raise ValueError("an approval notification needs the approval deadline (approval.expiresAt)")
        payload = build_notification(
            record,
            kind="approval-reminder" if kind == "approval-reminder" else "approval-requested",
            callback_url=self.base_url + CALLBACK_PATH,
            tokens=self.signer.callback_tokens(change_id, record.approval.expires_at, round_of(record)),
            status_url=change_links(self.base_url, change_id)["self"],
            review_url=f"{self.base_url}/review",
        )
        self.notifier.notify(payload)
        done = self.journal.record(record, [Step("approvers-notified", {"kind": kind})])
        return {"changeId": change_id, "status": done.status.value, "notified": True}
