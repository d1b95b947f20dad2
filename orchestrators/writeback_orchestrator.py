"""The write-back orchestration: prepare → [notify, wait for approval] → write; instance id = change id.

Deterministic: only ``yield context.*``; inputs and outputs are ids and states, never resources. Times come from
activity results (recorded in the history) and ``context.current_utc_datetime``.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

import azure.durable_functions as df

from activities.expire_change import expire_change
from activities.fail_change import fail_change
from activities.notify_approvers import notify_approvers
from activities.prepare_change import prepare_change
from activities.write_change import write_change

bp = df.Blueprint()

ORCHESTRATOR_NAME = "writeback_orchestrator"
APPROVAL_EVENT = "approval"
MAX_TIMER = timedelta(days=6)  # Durable timers are capped; longer deadlines loop
RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2000, max_number_of_attempts=5)


def _wait_for_approval(
    context: df.DurableOrchestrationContext, change_id: str, waiting: dict[str, Any]
) -> Generator[Any, Any, dict[str, Any]]:
    """A decision event racing the deadline, with an optional reminder on the way."""
    deadline = datetime.fromisoformat(waiting["expiresAt"])
    remind = datetime.fromisoformat(waiting["remindAt"]) if waiting.get("remindAt") else None
    while True:
        stop = min(deadline, remind) if remind else deadline
        fire_at = min(stop, context.current_utc_datetime + MAX_TIMER)
        timer = context.create_timer(fire_at)
        decision = context.wait_for_external_event(APPROVAL_EVENT)
        winner = yield context.task_any([decision, timer])
        if winner == decision:
            timer.cancel()
            return dict(decision.result)
        if remind is not None and fire_at >= remind:
            remind = None
            if waiting.get("notify"):
                yield context.call_activity(notify_approvers, {"changeId": change_id, "kind": "approval-reminder"})
            continue
        if fire_at >= deadline:
            expired: dict[str, Any] = yield context.call_activity(expire_change, {"changeId": change_id})
            return expired


@bp.orchestration_trigger(context_name="context", orchestration=ORCHESTRATOR_NAME)
def writeback_orchestrator(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    change_id = str(context.get_input()["changeId"])
    context.set_custom_status({"changeId": change_id, "step": "prepare"})
    try:
        result: dict[str, Any] = yield context.call_activity_with_retry(prepare_change, RETRY, {"changeId": change_id})
        if result["status"] == "awaiting_approval":
            context.set_custom_status({"changeId": change_id, "step": "awaiting_approval"})
            if result.get("notify"):
                yield context.call_activity_with_retry(
                    notify_approvers, RETRY, {"changeId": change_id, "kind": "approval-requested"}
                )
            result = yield from _wait_for_approval(context, change_id, result)
        if result["status"] == "writing":
            context.set_custom_status({"changeId": change_id, "step": "write"})
            result = yield context.call_activity_with_retry(write_change, RETRY, {"changeId": change_id})
    except Exception as exc:
        detail = str(exc).splitlines()[0][:500]
        result = yield context.call_activity(fail_change, {"changeId": change_id, "detail": detail})
    context.set_custom_status({"changeId": change_id, "step": "done", "status": result["status"]})
    return result
