"""Activity `write_change`: the version-checked write, Provenance and read-back check (see shared.pipeline)."""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df

from shared import bootstrap

bp = df.Blueprint()


@bp.activity_trigger(input_name="payload")
def write_change(payload: dict[str, Any]) -> dict[str, Any]:
    return bootstrap.pipeline().write(str(payload["changeId"]), int(payload.get("attempt", 0)))
