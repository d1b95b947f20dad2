"""Activity `notify_approvers`: POST the approval request (or a reminder) to the configured webhook."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from shared import bootstrap

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def notify_approvers(payload: dict[str, Any]) -> dict[str, Any]:
    return bootstrap.gateway().approval_notices.send(
        str(payload["changeId"]), str(payload.get("kind", "approval-requested"))
    )
