"""The gateway built by the composition root over the fakes of its storage and queue ports, for API-level tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.app.journal import Step
from shared.bootstrap import Gateway, build
from shared.config import Settings
from shared.core.models import ChangeStatus
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import (
    FakeChangeStore,
    FakeIdempotencyStore,
    FakePayloadStore,
    FakeRetentionState,
    FakeSweepState,
)
from tests.records import a_change_record

REPO = Path(__file__).resolve().parents[1]


def fake_gateway(
    *,
    targets_file: Path = REPO / "config" / "targets.yaml",
    policy_file: Path = REPO / "config" / "policy.yaml",
    clock: Callable[[], datetime] | None = None,
    settings: dict[str, Any] | None = None,
    **overrides: Any,
) -> Gateway:
    """``build`` with the shipped (or given) targets and policy, and fakes for every store, queue and sweep."""
    parts: dict[str, Any] = {
        "change_store": FakeChangeStore(),
        "idempotency_store": FakeIdempotencyStore(),
        "payload_store": FakePayloadStore(),
        "sweep_state": FakeSweepState(),
        "retention_state": FakeRetentionState(),
        "publisher": FakeMessagePublisher(),
        **({"clock": clock} if clock is not None else {}),
        **overrides,
    }
    return build(Settings(targets_file=targets_file, policy_file=policy_file, **(settings or {})), **parts)


def with_change_awaiting_approval(gateway: Gateway, at: datetime, change_id: str = "c1") -> Gateway:
    """Open change ``change_id`` (user u1 through crm) and move it to ``awaiting_approval``."""
    opened = gateway.journal.open(a_change_record(change_id, status=ChangeStatus.ACCEPTED, at=at), Step("accepted"))
    gateway.journal.record(opened, [Step("awaiting_approval")], status=ChangeStatus.AWAITING_APPROVAL)
    return gateway
