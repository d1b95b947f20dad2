"""What every state-changing request must be before anything is decided: a bounded body, JSON when it has content
(415: a form or text body is what another site can make a browser send without asking), and for a person's
browser session, from this site (403 from another origin: the session cookie rides along on cross-site requests)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.api.caller_identity import OBJECT_ID_CLAIM_URI, ROLE_CLAIM_URI, encode_easyauth_principal
from shared.api.requests import SMALL_BODY_BYTES
from shared.bootstrap import Gateway
from shared.core.models import ChangeStatus
from tests.fake_gateway import fake_gateway, with_change_awaiting_approval

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
SITE = "http://gw.example"
JSON = {"Content-Type": "application/json"}
OPERATOR = {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("ops", ["Writeback.Operate", "Writeback.Approve"])}


def session(roles: list[str]) -> dict[str, str]:
    """A person's browser session, as App Service builds its principal from the ID token."""
    claims = [
        ("aud", "site-app"),
        (OBJECT_ID_CLAIM_URI, "person-1"),
        ("name", "Pat"),
        *((ROLE_CLAIM_URI, r) for r in roles),
    ]
    document = {"auth_typ": "aad", "role_typ": ROLE_CLAIM_URI, "claims": [{"typ": t, "val": v} for t, v in claims]}
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(document).encode()).decode()}


@pytest.fixture
def gw() -> Gateway:
    return with_change_awaiting_approval(fake_gateway(clock=lambda: NOW), NOW)


def decide(gw: Gateway, headers: dict[str, str], body: bytes = b'{"decision": "reject"}') -> Any:
    return gw.approvals_api.decide_approval(headers, "c1", body, SITE)[0]


def status(gw: Gateway) -> ChangeStatus:
    record = gw.change_store.get("c1")
    assert record is not None
    return record.status


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_that_is_not_json_is_415_and_decides_nothing(gw: Gateway, content_type: str | None) -> None:
    headers = {**OPERATOR, **({"Content-Type": content_type} if content_type else {})}
    answer = decide(gw, headers)
    assert answer.status == 415 and answer.body["issues"][0]["path"] == "Content-Type"
    assert status(gw) is ChangeStatus.AWAITING_APPROVAL


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/merge+json"]
)
def test_json_media_types_are_taken(gw: Gateway, content_type: str) -> None:
    assert decide(gw, {**OPERATOR, "Content-Type": content_type}).status == 200


def test_bodiless_cancel_and_retry_need_no_content_type(gw: Gateway) -> None:
    assert gw.approvals_api.cancel(OPERATOR, "c1", b"", SITE)[0].status == 200


@pytest.mark.parametrize(
    "call",
    [
        lambda gw, body: decide(gw, {**OPERATOR, **JSON}, body),
        lambda gw, body: gw.approvals_api.cancel({**OPERATOR, **JSON}, "c1", body, SITE)[0],
        lambda gw, body: gw.operations_api.resolve({**OPERATOR, **JSON}, "c1", body, SITE),
        lambda gw, body: gw.operations_api.replay({**OPERATOR, **JSON}, body, SITE),
        lambda gw, body: gw.operations_api.retry({**OPERATOR, **JSON}, "c1", body, SITE),
    ],
    ids=["approval", "cancel", "resolve", "replay", "retry"],
)
def test_every_small_body_has_a_limit(gw: Gateway, call: Any) -> None:
    too_big = json.dumps({"comment": "x" * SMALL_BODY_BYTES}).encode()
    answer = call(gw, too_big)
    assert answer.status == 413, answer.body
    assert status(gw) is ChangeStatus.AWAITING_APPROVAL


@pytest.mark.parametrize(
    "where",
    [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "https://evil.example"}],
)
def test_a_session_request_from_another_origin_is_403(gw: Gateway, where: dict[str, str]) -> None:
    answer = decide(gw, {**session(["Writeback.Approve"]), **JSON, **where})
    assert answer.status == 403 and "another origin" in answer.body["detail"]
    assert status(gw) is ChangeStatus.AWAITING_APPROVAL


@pytest.mark.parametrize("where", [{"Sec-Fetch-Site": "same-origin"}, {"Origin": SITE}, {}])
def test_a_session_request_from_this_site_goes_through(gw: Gateway, where: dict[str, str]) -> None:
    assert decide(gw, {**session(["Writeback.Approve"]), **JSON, **where}).status == 200


def test_a_token_caller_from_another_origin_is_not_a_csrf_risk(gw: Gateway) -> None:
    """An app's token does not ride along on a cross-site request: only cookie sessions are checked."""
    assert decide(gw, {**OPERATOR, **JSON, "Origin": "https://app.example"}).status == 200
