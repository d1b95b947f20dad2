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
MAX_WAITS = 12  # answers of "retry" (a throttled or failing target) before the change fails
DEFAULT_RETRY_DEADLINE = timedelta(hours=1)


def _with_waits(
    context: df.DurableOrchestrationContext, activity: Any, change_id: str, deadline: datetime, trace: str | None
) -> Generator[Any, Any, dict[str, Any]]:
    """Call a step; while it answers ``retry``, wait on a durable timer as long as it says, within the deadline."""
    attempt = 0
    while True:
        result: dict[str, Any] = yield context.call_activity_with_retry(
            activity, RETRY, {"changeId": change_id, "attempt": attempt, "traceparent": trace}
        )
        if not result.get("retry"):
            return result
        attempt += 1
        wake_at = context.current_utc_datetime + timedelta(seconds=float(result["retryAfter"]))
        if attempt >= MAX_WAITS or wake_at > deadline:
            detail = f"the target kept failing ({result.get('code')}, HTTP {result.get('downstreamStatus')})"
            failed: dict[str, Any] = yield context.call_activity(fail_change, {"changeId": change_id, "detail": detail})
            return failed
        context.set_custom_status({"changeId": change_id, "step": "waiting-to-retry", "attempt": attempt})
        yield context.create_timer(wake_at)


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
    start = context.get_input()
    change_id = str(start["changeId"])
    trace = start.get("traceparent")
    # The retry deadline bounds the waits of one phase: time spent awaiting a person does not use it up.
    retry_window = timedelta(seconds=float(start.get("retryDeadlineSeconds", DEFAULT_RETRY_DEADLINE.total_seconds())))
    deadline = context.current_utc_datetime + retry_window
    context.set_custom_status({"changeId": change_id, "step": "prepare"})
    try:
        result = yield from _with_waits(context, prepare_change, change_id, deadline, trace)
        if result["status"] == "awaiting_approval":
            context.set_custom_status({"changeId": change_id, "step": "awaiting_approval"})
            if result.get("notify"):
                yield context.call_activity_with_retry(
                    notify_approvers, RETRY, {"changeId": change_id, "kind": "approval-requested"}
                )
            result = yield from _wait_for_approval(context, change_id, result)
            deadline = context.current_utc_datetime + retry_window
        if result["status"] == "writing":
            context.set_custom_status({"changeId": change_id, "step": "write"})
            result = yield from _with_waits(context, write_change, change_id, deadline, trace)
    except Exception as exc:
        detail = str(exc).splitlines()[0][:500]
        result = yield context.call_activity(fail_change, {"changeId": change_id, "detail": detail})
    context.set_custom_status({"changeId": change_id, "step": "done", "status": result["status"]})
    return result
