"""Approval notifications: the payload sent to the approval webhook (a Power Automate or Logic Apps flow) and the
client that POSTs it.

The payload names the change, the element paths and the policy's reasons, and carries the signed approve / reject
callback links; it never carries a value from the resource or the diff. The webhook URL holds the flow's SAS
signature (``sig``), so it is a secret: it never appears in errors, logs or ``repr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from shared.adapters.fhir_http import parse_retry_after
from shared.errors import ConfigurationError, PermanentError, RetryableError
from shared.models import ChangeRecord

NotificationKind = Literal["approval-requested", "approval-reminder"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def build_notification(
    record: ChangeRecord,
    *,
    kind: NotificationKind,
    links: Mapping[str, str],
    status_url: str,
    review_url: str,
) -> dict[str, Any]:
    """The webhook body for a change awaiting approval: ids, paths, rules and links; no resource or diff values.

    Raises ValueError when the record has no plan, no approval deadline, or ``links`` lacks approve / reject.
    """
    plan = record.plan
    if plan is None:
        raise ValueError("an approval notification needs the change's plan")
    expires_at = (record.approval or {}).get("expiresAt")
    if isinstance(expires_at, datetime):
        expires_at = expires_at.isoformat()
    if not isinstance(expires_at, str) or not expires_at:
        raise ValueError("an approval notification needs the approval deadline (approval.expiresAt)")
    if not isinstance(links.get("approve"), str) or not isinstance(links.get("reject"), str):
        raise ValueError("an approval notification needs both the approve and the reject link")

    reasons = [
        {"path": item["path"], "rule": item["rule"]}
        for item in plan.get("reasons") or []
        if isinstance(item, Mapping) and isinstance(item.get("path"), str) and isinstance(item.get("rule"), str)
    ]
    changed_paths = [p for p in plan.get("changedPaths") or [] if isinstance(p, str)]
    policy_version = plan.get("policyVersion")
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
        "approveUrl": links["approve"],
        "rejectUrl": links["reject"],
        "statusUrl": status_url,
        "reviewUrl": review_url,
    }


class ApprovalNotifier:
    """POSTs notifications to the approval webhook. 408 / 429 / 5xx / no answer → RetryableError (``retry_after``
    from ``Retry-After``); any other non-2xx → PermanentError. Redirects are not followed: a flow's trigger URL
    answers directly, and following one would send the payload somewhere the setting did not name."""

    def __init__(self, webhook_url: str, *, http: httpx.Client | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(webhook_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("WRITEBACK_APPROVAL_WEBHOOK_URL: must be an http(s) URL")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            raise ConfigurationError("WRITEBACK_APPROVAL_WEBHOOK_URL: must be https (http only for a loopback host)")
        self._url = webhook_url
        self._host = parts.hostname
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(follow_redirects=False)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"ApprovalNotifier(host={self._host!r})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ApprovalNotifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, payload: Mapping[str, Any]) -> None:
        try:
            response = self._http.post(
                self._url,
                json=dict(payload),
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                follow_redirects=False,
            )
        except httpx.TimeoutException:
            # ``from None``: httpx exceptions can carry the request, and so the URL with its SAS signature.
            raise RetryableError("approval webhook timed out") from None
        except httpx.TransportError as exc:
            raise RetryableError(f"approval webhook unreachable ({type(exc).__name__})") from None
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"approval webhook answered {status}"
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RetryableError(detail, downstream_status=status, retry_after=retry_after)
        raise PermanentError(detail, downstream_status=status)
