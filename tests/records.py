"""Change records for tests that need one stored without going through intake."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.core.models import ChangeRecord, ChangeStatus, Operation, PayloadRef, Principal

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def a_change_record(
    change_id: str, *, target: str = "local-ehr", status: ChangeStatus = ChangeStatus.ACCEPTED, at: datetime = NOW
) -> ChangeRecord:
    """An update of Patient/p1 requested by user u1 of app crm, with an empty inline payload."""
    return ChangeRecord(
        change_id=change_id,
        status=status,
        target=target,
        operation=Operation.UPDATE,
        resource_type="Patient",
        resource_id="p1",
        requested_by=Principal(app_id="crm", user_id="u1"),
        submitted_at=at,
        updated_at=at,
        request_hash="0" * 64,
        payload=PayloadRef(kind="inline", sha256="0" * 64, size=2, inline="{}"),
    )
