"""Activity `write_change`: the version-checked write, Provenance and read-back check (see shared.app.pipeline)."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from shared import bootstrap
from shared.core.telemetry import change_span

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def write_change(payload: dict[str, Any]) -> dict[str, Any]:
    change_id = str(payload["changeId"])
    with change_span("writeback.write", change_id, traceparent=payload.get("traceparent")):
        return bootstrap.gateway().pipeline.write(change_id, int(payload.get("attempt", 0)))
