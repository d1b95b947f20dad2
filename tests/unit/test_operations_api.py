"""The operations API over the fakes, wired by the composition root: resolving a conflict keeps the person's comment.

The comment is kept on the change record (``resolution``, shown in the status) and its hash in the lineage (the
lineage never holds free text, which may hold PHI).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.api.caller_identity import encode_easyauth_principal
from shared.app.journal import Step
from shared.bootstrap import Gateway, build
from shared.config import Settings
from shared.core.models import ChangeStatus
from shared.fakes.stores import FakeChangeStore
from tests.fake_gateway import fake_gateway
from tests.records import a_change_record

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
APPROVER = {
    "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("portal", ["Writeback.Approve"], user_id="rev1"),
    "Content-Type": "application/json",
}


@pytest.fixture
def gateway() -> Gateway:
    return fake_gateway(clock=lambda: NOW)


def in_conflict(gateway: Gateway, change_id: str) -> None:
    record = a_change_record(change_id, target="local-ehr", status=ChangeStatus.ACCEPTED, at=NOW)
    opened = gateway.journal.open(record, Step("accepted"))
    gateway.journal.record(opened, [Step("conflict")], status=ChangeStatus.CONFLICT)


@pytest.mark.parametrize(
    ("action", "status", "event"), [("discard", 200, "discarded"), ("replan", 202, "retry-requested")]
)
def test_a_resolution_keeps_its_comment(gateway: Gateway, action: str, status: int, event: str) -> None:
    in_conflict(gateway, "c1")
    comment = "checked with the ward: their number is newer"

    response = gateway.operations_api.resolve(
        APPROVER, "c1", f'{{"action": "{action}", "comment": "{comment}"}}'.encode(), "http://gw"
    )

    assert response.status == status, response.body
    assert response.body["resolution"] == {"action": action, "by": "rev1", "at": NOW.isoformat(), "comment": comment}
    resolved = next(e for e in gateway.change_store.lineage("c1") if e.event == event)
    assert resolved.details["commentHash"] == hashlib.sha256(comment.encode()).hexdigest()
    assert comment not in str(resolved.details)


def test_build_refuses_an_override_for_a_part_that_does_not_exist() -> None:
    with pytest.raises(TypeError, match="change_stor"):
        build(Settings(), change_stor=FakeChangeStore())
