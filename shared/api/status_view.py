"""The status resource of a change (DESIGN.md §4), as callers and Logic Apps' async polling see it."""

from __future__ import annotations

from typing import Any

from shared.core.links import change_links
from shared.core.models import ChangeRecord, LineageEvent
from shared.core.record_parts import StoredPart


def status_body(record: ChangeRecord, base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "changeId": record.change_id,
        "status": record.status.value,
        "target": record.target,
        "operation": record.operation.value,
        "resourceType": record.resource_type,
        "resourceRef": record.resource_ref,
        "requestedBy": {"app": record.requested_by.app_id, "user": record.requested_by.user_id},
        "submittedAt": record.submitted_at.isoformat(),
        "updatedAt": record.updated_at.isoformat(),
        "dryRun": record.dry_run,
        "plan": _part(record.plan),
        "approval": _part(record.approval),
        "result": _part(record.result),
        "error": _part(record.error),
        "resolution": _part(record.resolution),
        # After the retention the request body, planned resource, diff values and comments are gone: the plan's diff
        # keeps its operations and paths only.
        "payloadPurged": record.payload_purged_at is not None,
        "payloadPurgedAt": record.payload_purged_at.isoformat() if record.payload_purged_at else None,
        "links": change_links(base_url, record.change_id),
    }
    return {k: v for k, v in body.items() if v is not None}


def _part(part: StoredPart | None) -> dict[str, Any] | None:
    return part.to_record() if part is not None else None


def accepted_body(record: ChangeRecord, base_url: str) -> dict[str, Any]:
    """The 202 answer to a submission: the same for the first answer and every replay of it."""
    return {
        "changeId": record.change_id,
        "status": "accepted",
        "target": record.target,
        "operation": record.operation.value,
        "resourceType": record.resource_type,
        "resourceRef": record.resource_ref,
        "submittedAt": record.submitted_at.isoformat(),
        "links": change_links(base_url, record.change_id),
    }


def lineage_body(change_id: str, events: list[LineageEvent]) -> dict[str, Any]:
    return {
        "changeId": change_id,
        "events": [
            {
                "sequence": e.sequence,
                "event": e.event,
                "status": e.status.value,
                "at": e.at.isoformat(),
                "actor": e.actor,
                "details": e.details,
            }
            for e in events
        ],
    }
