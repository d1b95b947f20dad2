"""The signed approval callback (``POST /api/v1/callbacks/approval``) over the fakes, wired by the composition root.

A token approves only the round of approval it was issued for (the sequence of the round's ``awaiting_approval``
event, the change's retry count, the hash of the diff put to the approvers): a token of an earlier round, or one
without the claim, answers 409 and changes nothing. A name the link's holder gives is recorded as claimed; a valid
token sent beside it is recorded as who decided, and separation of duties applies to it.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shared.api.caller_identity import encode_easyauth_principal
from shared.app.approvals import round_of
from shared.app.journal import Step
from shared.bootstrap import Gateway
from shared.core.models import ChangeStatus
from shared.core.record_parts import ApprovalState, ChangePlan
from shared.fakes.approval_nonces import FakeApprovalNonceStore
from tests.fake_gateway import fake_gateway
from tests.records import a_change_record

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)  # the signer checks expiry against the real clock
KEY = base64.b64encode(bytes(range(32))).decode()
DIFF = [{"op": "replace", "path": "/name/0/family", "value": "Doe-Smith"}]


@pytest.fixture
def gw() -> Gateway:
    return fake_gateway(
        settings={"approval_signing_keys": SecretStr(f"k1:{KEY}")},
        approval_nonces=FakeApprovalNonceStore(),
        clock=lambda: NOW,
    )


def awaiting(gw: Gateway, *, diff: list[dict[str, Any]] = DIFF, retries: int = 0) -> dict[str, str]:
    """Put change c1 in ``awaiting_approval`` (a new round each call); the round's approve and reject tokens."""
    record = gw.change_store.get("c1")
    if record is None:
        record = gw.journal.open(a_change_record("c1", status=ChangeStatus.ACCEPTED, at=NOW), Step("accepted"))
    record = gw.journal.load("c1", fresh=True)
    approval = ApprovalState(required=True, expires_at=NOW + timedelta(hours=72), round=record.sequence + 1)
    waiting = gw.journal.record(
        record,
        [Step("awaiting_approval")],
        status=ChangeStatus.AWAITING_APPROVAL,
        plan=ChangePlan(diff=diff),
        approval=approval.model_copy(update={"diff_hash": None}),
        retries=retries,
    )
    return gw.approval_signer.callback_tokens("c1", NOW + timedelta(hours=72), round_of(waiting))


def call(gw: Gateway, token: str, *, body: dict[str, Any] | None = None, **headers: str) -> Any:
    response, _ = gw.approvals_api.approval_callback(
        {"X-Approval-Token": token, "Content-Type": "application/json", **headers},
        json.dumps(body or {}).encode(),
        "http://gw",
    )
    return response


def test_a_token_of_the_round_decides(gw: Gateway) -> None:
    tokens = awaiting(gw)
    answer = call(gw, tokens["approve"], body={"approver": "Dana Boss"})
    assert answer.status == 202, answer.body
    assert answer.body["approval"]["decidedBy"] == "approval-link"
    assert answer.body["approval"]["claimedBy"] == "Dana Boss"


def test_a_token_of_an_earlier_round_is_refused_and_changes_nothing(gw: Gateway) -> None:
    earlier = awaiting(gw)
    gw.journal.record(gw.journal.load("c1", fresh=True), [Step("conflict")], status=ChangeStatus.CONFLICT)
    now = awaiting(gw, diff=[{"op": "replace", "path": "/name/0/family", "value": "Someone-Else"}], retries=1)

    refused = call(gw, earlier["approve"])
    assert refused.status == 409 and refused.body["type"].endswith("stale-approval-link"), refused.body
    assert gw.change_store.get("c1").status is ChangeStatus.AWAITING_APPROVAL  # type: ignore[union-attr]
    assert call(gw, now["reject"]).status == 200, "the current round's tokens still work"


def test_a_token_without_a_round_is_refused(gw: Gateway) -> None:
    awaiting(gw)
    bare = gw.approval_signer.sign("c1", "approve", NOW + timedelta(hours=72))
    refused = call(gw, bare)
    assert refused.status == 409 and refused.body["type"].endswith("stale-approval-link")
    assert gw.change_store.get("c1").status is ChangeStatus.AWAITING_APPROVAL  # type: ignore[union-attr]


def test_a_verified_identity_sent_beside_the_token_is_who_decided(gw: Gateway) -> None:
    tokens = awaiting(gw)
    principal = encode_easyauth_principal("portal", [], user_id="rev-7", name="Rev Seven")
    answer = call(
        gw, tokens["approve"], body={"approver": "someone else"}, Authorization="Bearer x", **{
            "X-MS-CLIENT-PRINCIPAL": principal
        }
    )  # fmt: skip
    assert answer.status == 202, answer.body
    assert answer.body["approval"]["decidedBy"] == "rev-7" and answer.body["approval"]["claimedBy"] == "someone else"


def test_the_requester_sending_their_own_token_beside_the_link_is_refused(gw: Gateway) -> None:
    tokens = awaiting(gw)
    requester = encode_easyauth_principal("crm", [], user_id="u1")  # a_change_record's requester
    answer = call(gw, tokens["approve"], Authorization="Bearer x", **{"X-MS-CLIENT-PRINCIPAL": requester})
    assert answer.status == 403 and answer.body["type"].endswith("self-approval")


def test_a_bearer_token_that_does_not_validate_is_refused_not_ignored(gw: Gateway) -> None:
    tokens = awaiting(gw)
    assert call(gw, tokens["approve"], Authorization="Bearer garbage").status == 401
    assert gw.change_store.get("c1").status is ChangeStatus.AWAITING_APPROVAL  # type: ignore[union-attr]
