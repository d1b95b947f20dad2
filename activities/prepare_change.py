"""Activity `prepare_change`: read, plan and decide, and write what the policy allows (see shared.app.pipeline)."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from shared import bootstrap
from shared.core.telemetry import change_span

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def prepare_change(payload: dict[str, Any]) -> dict[str, Any]:
    change_id = str(payload["changeId"])
    with change_span("writeback.prepare", change_id, traceparent=payload.get("traceparent")):
        return bootstrap.gateway().pipeline.prepare_and_write(change_id, int(payload.get("attempt", 0)))
