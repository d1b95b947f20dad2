"""Object-level authorisation (OWASP API1) over the fakes: who reads a change, who decides on it.

A person with Submit reads what they submitted; an app acting as itself with Submit reads its app's changes; the
reading roles read within their target scope (the policy's ``reviewers``); nobody else. Deciding honours the scope,
and an approver is neither the requesting person nor the requesting app acting as itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shared.api.caller_identity import encode_easyauth_principal
from shared.bootstrap import Gateway
from shared.core.models import ChangeStatus
from tests.fake_gateway import fake_gateway, with_change_awaiting_approval

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
JSON = {"Content-Type": "application/json"}
REVIEWERS = """
reviewers:
  - principals: [rev-local, crm]
    targets: [local-ehr]
  - principals: [rev-elsewhere]
    targets: [another-ehr]
"""


def caller(app: str, roles: list[str], user: str | None) -> dict[str, str]:
    return {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal(app, roles, user_id=user), **JSON}


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    """Change c1 of user u1 through crm, at local-ehr, awaiting approval; reviewers scoped by target."""
    targets = yaml.safe_load((REPO / "config" / "targets.yaml").read_text())
    targets["targets"]["another-ehr"] = targets["targets"]["local-ehr"]
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(targets))
    policy = yaml.safe_load((REPO / "config" / "policy.yaml").read_text())
    # Every target needs rules of some source (start-up checks that the policy and the targets agree).
    policy["sources"]["elsewhere-app"] = {
        "app_ids": ["elsewhere-app"],
        "targets": {"another-ehr": {"Patient": {"operations": ["update"], "paths": {"Patient.telecom": "allow"}}}},
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy) + REVIEWERS)
    gateway = fake_gateway(
        targets_file=tmp_path / "targets.yaml", policy_file=tmp_path / "policy.yaml", clock=lambda: NOW
    )
    return with_change_awaiting_approval(gateway, NOW)


@pytest.mark.parametrize(
    ("who", "status"),
    [
        (caller("crm", ["Writeback.Submit"], "u1"), 202),  # the requester
        (caller("crm", ["Writeback.Submit"], None), 202),  # the app itself
        (caller("crm", ["Writeback.Submit"], "u2"), 404),  # a colleague in the same app
        (caller("crm", [], "u1"), 404),  # no role at all
        (caller("portal", ["Writeback.Audit"], "rev-local"), 202),  # a reviewer of local-ehr
        (caller("portal", ["Writeback.Audit"], "rev-elsewhere"), 404),  # a reviewer of another target
    ],
    ids=["requester", "app-itself", "colleague", "no-role", "reviewer-in-scope", "reviewer-out-of-scope"],
)
def test_who_reads_a_change(gw: Gateway, who: dict[str, str], status: int) -> None:
    """202: visible (the change still runs); 404: not visible (its existence is not revealed)."""
    assert gw.changes_api.get_change(who, "c1", "http://gw").status == status


def test_a_reviewer_out_of_scope_cannot_approve(gw: Gateway) -> None:
    answer, _ = gw.approvals_api.decide_approval(
        caller("portal", ["Writeback.Approve"], "rev-elsewhere"), "c1", b'{"decision": "approve"}', "http://gw"
    )
    assert answer.status == 404
    assert gw.change_store.get("c1").status is ChangeStatus.AWAITING_APPROVAL  # type: ignore[union-attr]


def test_the_requesting_app_acting_as_itself_cannot_approve_its_users_change(gw: Gateway) -> None:
    app_itself = caller("crm", ["Writeback.Approve"], None)
    answer, _ = gw.approvals_api.decide_approval(app_itself, "c1", b'{"decision": "approve"}', "http://gw")
    assert answer.status == 403 and answer.body["type"].endswith("self-approval")
    assert gw.change_store.get("c1").status is ChangeStatus.AWAITING_APPROVAL  # type: ignore[union-attr]


def test_a_reviewer_in_scope_approves(gw: Gateway) -> None:
    answer, _ = gw.approvals_api.decide_approval(
        caller("portal", ["Writeback.Approve"], "rev-local"), "c1", b'{"decision": "approve"}', "http://gw"
    )
    assert answer.status == 202 and answer.body["approval"]["decidedBy"] == "rev-local"
