"""Activity `prepare_change`: read, plan and decide, and write what the policy allows (see shared.app.pipeline)."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
import azure.functions as func

from shared import bootstrap
from shared.core.telemetry import change_span, host_trace

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def prepare_change(payload: dict[str, Any], context: func.Context) -> dict[str, Any]:
    change_id = str(payload["changeId"])
    # The span continues the change's trace (the orchestration's input) and links the host's span of this call.
    with (
        host_trace(context.trace_context),
        change_span("writeback.prepare", change_id, traceparent=payload.get("traceparent")),
    ):
        return bootstrap.gateway().pipeline.prepare_and_write(change_id, int(payload.get("attempt", 0)))
