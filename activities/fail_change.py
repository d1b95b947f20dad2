"""Activity `fail_change`: retries ran out; record the change as failed."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from shared import bootstrap

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def fail_change(payload: dict[str, Any]) -> dict[str, Any]:
    return bootstrap.gateway().pipeline.fail(str(payload["changeId"]), str(payload.get("detail", "")))
