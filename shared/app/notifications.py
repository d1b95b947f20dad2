"""Approval notifications: the payload sent to the approval webhook (a Power Automate or Logic Apps flow).

The payload names the change, the element paths and the policy's reasons, and carries the callback URL with the
signed approve and reject tokens; it never carries a value from the resource or the diff.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from shared.core.models import ChangeRecord

NotificationKind = Literal["approval-requested", "approval-reminder"]


def build_notification(
    record: ChangeRecord,
    *,
    kind: NotificationKind,
    callback_url: str,
    tokens: Mapping[str, str],
    status_url: str,
    review_url: str,
) -> dict[str, Any]:
    """The webhook body for a change awaiting approval: ids, paths, rules, links, and the approve and reject tokens
    as separate fields (a flow posts one to ``callbackUrl`` in a header); no resource or diff values.

    Raises ValueError when the record has no plan, no approval deadline, or ``tokens`` lacks approve / reject.
    """
    plan = record.plan
    if plan is None:
        raise ValueError("an approval notification needs the change's plan")
    if record.approval is None or record.approval.expires_at is None:
        raise ValueError("an approval notification needs the approval deadline (approval.expiresAt)")
    expires_at = record.approval.expires_at.isoformat()
    if not isinstance(tokens.get("approve"), str) or not isinstance(tokens.get("reject"), str):
        raise ValueError("an approval notification needs both the approve and the reject token")

    reasons = [
        {"path": item["path"], "rule": item["rule"]}
        for item in plan.reasons
        if isinstance(item.get("path"), str) and isinstance(item.get("rule"), str)
    ]
    changed_paths = plan.changed_paths
    policy_version = plan.policy_version
    return {
        "kind": kind,
        "changeId": record.change_id,
        "target": record.target,
        "resourceType": record.resource_type,
        "resourceRef": record.resource_ref,
        "operation": record.operation.value,
        "requestedBy": {"app": record.requested_by.app_id, "user": record.requested_by.user_id},
        "changedPaths": changed_paths,
        "approvalPaths": [r["path"] for r in reasons if r["rule"] == "approve"],
        "reasons": reasons,
        "policyVersion": policy_version if isinstance(policy_version, str) else None,
        "expiresAt": expires_at,
        "callbackUrl": callback_url,
        "approveToken": tokens["approve"],
        "rejectToken": tokens["reject"],
        "statusUrl": status_url,
        "reviewUrl": review_url,
    }
