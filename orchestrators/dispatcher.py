"""Service Bus trigger: start ``writeback_orchestrator`` for a queued change, instance id = change id.

No record is read here: a change whose orchestration runs refuses a second start, and one that ran starts again
only to find its record past ``accepted`` and stop (``host.json``'s ``overridableExistingInstanceStates`` lets a
finished instance be replaced, as an operator's retry needs). A body that is not a change message raises, so
Service Bus redelivers it and finally dead-letters it (MaxDeliveryCountExceeded). When the start fails, the
instance's status decides: an existing instance is success, no instance re-raises the start's error.
"""

from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from orchestrators.writeback_orchestrator import ORCHESTRATOR_NAME
from shared.app.dispatch import parse_message
from shared.config import get_settings
from shared.core.telemetry import change_span, current_traceparent, host_trace

bp = df.Blueprint()
log = logging.getLogger("writeback.dispatcher")


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%WRITEBACK_QUEUE_NAME%", connection="ServiceBusConnection")
@bp.durable_client_input(client_name="client")
async def dispatch_change(
    msg: func.ServiceBusMessage, client: df.DurableOrchestrationClient, context: func.Context
) -> None:
    with host_trace(context.trace_context):  # the span continues the change's trace and links the host's
        await _dispatch(msg, client)


async def _dispatch(msg: func.ServiceBusMessage, client: df.DurableOrchestrationClient) -> None:
    message = parse_message(msg.get_body())
    change_id = message.change_id
    try:
        with change_span("writeback.dispatch", change_id, traceparent=message.traceparent):
            start = {
                "changeId": change_id,
                "retryDeadlineSeconds": get_settings().retry_deadline_minutes * 60,
                "traceparent": current_traceparent(),
            }
            await client.start_new(ORCHESTRATOR_NAME, change_id, start)
    except Exception:
        # Judge a failed start by the instance, not by the error's text: an instance with this id (in any state)
        # means the change was started (a duplicate start refused, or a start whose answer was lost); none means
        # it was not, and the message must come back.
        if await _instance_exists(client, change_id):
            log.info("change %s: orchestration already started", change_id)
            return
        raise


async def _instance_exists(client: df.DurableOrchestrationClient, instance_id: str) -> bool:
    try:
        status = await client.get_status(instance_id)
    except Exception:
        log.warning("instance %s: status unavailable after a failed start", instance_id, exc_info=True)
        return False
    # The SDK's status is falsy when the task hub has no such instance (the status API answers 404).
    return bool(status)
