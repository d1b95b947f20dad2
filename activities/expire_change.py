"""Activity `expire_change`: no approval came in time."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from shared import bootstrap

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def expire_change(payload: dict[str, Any]) -> dict[str, Any]:
    return bootstrap.gateway().pipeline.expire(str(payload["changeId"]))
