"""A person signed in to the site: App Service builds their ``X-MS-CLIENT-PRINCIPAL`` from the ID token, which has no
app id (``azp``/``appid``), no ``scp`` and no ``idtyp``. The gateway takes them as the person (``oid``) of the app
registration the session belongs to (``aud``): reviewers are distinct people, a session reviews and approves within
its roles, and submits only when the policy maps its app registration as a source."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.api.caller_identity import (
    OBJECT_ID_CLAIM_URI,
    ROLE_APPROVE,
    ROLE_CLAIM_URI,
    ROLE_SUBMIT,
    SESSION,
    principal_from_easyauth,
)
from shared.app.journal import Step
from shared.bootstrap import Gateway
from shared.core.errors import UnauthenticatedError
from shared.core.models import ChangeStatus, Principal
from tests.fake_gateway import fake_gateway
from tests.records import a_change_record

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
SITE_APP = "6d9d3f7e-1111-4222-8333-444455556666"  # the gateway's Easy Auth app registration (the ID token's aud)
ALICE, BOB = "a1a1a1a1-0000-4000-8000-000000000001", "b2b2b2b2-0000-4000-8000-000000000002"


def session_header(oid: str, name: str, *roles: str, aud: str = SITE_APP) -> str:
    """``X-MS-CLIENT-PRINCIPAL`` as App Service sends it for a browser session: the ID token's claims after its
    default mapping (``oid`` as the objectidentifier URI, roles under ``role_typ``)."""
    claims = [
        ("aud", aud),
        ("iss", "https://login.microsoftonline.com/72f988bf-0000-4000-8000-000000000000/v2.0"),
        ("iat", "1764590400"),
        ("exp", "1764594000"),
        (OBJECT_ID_CLAIM_URI, oid),
        ("http://schemas.microsoft.com/identity/claims/tenantid", "72f988bf-0000-4000-8000-000000000000"),
        ("name", name),
        ("preferred_username", f"{name.split()[0].lower()}@example.org"),
        ("sub", "s-" + oid[:8]),
        ("ver", "2.0"),
        *((ROLE_CLAIM_URI, role) for role in roles),
    ]
    document = {
        "auth_typ": "aad",
        "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
        "role_typ": ROLE_CLAIM_URI,
        "claims": [{"typ": t, "val": v} for t, v in claims],
    }
    return base64.b64encode(json.dumps(document).encode()).decode()


def headers(value: str) -> dict[str, str]:
    return {"X-MS-CLIENT-PRINCIPAL": value, "Content-Type": "application/json"}


def test_a_principal_built_from_an_id_token_is_the_person() -> None:
    principal = principal_from_easyauth(session_header(ALICE, "Alice Reviewer", ROLE_APPROVE))
    assert principal == Principal(
        app_id=SITE_APP, user_id=ALICE, display_name="Alice Reviewer", roles=[ROLE_APPROVE], auth_type=SESSION
    )
    assert principal.actor == ALICE


def test_two_reviewers_of_one_app_registration_are_two_people() -> None:
    alice = principal_from_easyauth(session_header(ALICE, "Alice Reviewer", ROLE_APPROVE))
    bob = principal_from_easyauth(session_header(BOB, "Bob Reviewer", ROLE_APPROVE))
    assert alice.app_id == bob.app_id and alice.actor != bob.actor


def test_an_app_only_principal_is_never_a_person() -> None:
    claims = [{"typ": "azp", "val": "crm"}, {"typ": OBJECT_ID_CLAIM_URI, "val": ALICE}, {"typ": "aud", "val": "x"}]
    document = {"auth_typ": "aad", "claims": claims}
    principal = principal_from_easyauth(base64.b64encode(json.dumps(document).encode()).decode())
    assert principal.user_id is None and principal.actor == "app:crm" and principal.auth_type != SESSION


def test_a_principal_with_neither_an_app_id_nor_a_person_is_refused() -> None:
    claims = [{"typ": "aud", "val": SITE_APP}, {"typ": "name", "val": "nobody"}]
    document = {"auth_typ": "aad", "claims": claims}
    with pytest.raises(UnauthenticatedError, match="no app id"):
        principal_from_easyauth(base64.b64encode(json.dumps(document).encode()).decode())


# --- what a session may do --------------------------------------------------------------------------------------


def gateway(policy_file: Path = REPO / "config" / "policy.yaml") -> Gateway:
    return fake_gateway(policy_file=policy_file, clock=lambda: NOW)


CHANGE = json.dumps(
    {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": "555-0100"}],
    }
).encode()


def test_a_session_cannot_submit_unless_the_policy_maps_its_app_registration(tmp_path: Path) -> None:
    submitter = headers(session_header(ALICE, "Alice Clerk", ROLE_SUBMIT)) | {"Idempotency-Key": "k1"}
    refused = gateway().changes_api.submit(submitter, CHANGE, "http://gw")
    assert refused.status == 403 and "signed in to the site" in refused.body["detail"]

    policy = (REPO / "config" / "policy.yaml").read_text().replace("app_ids: [crm]", f"app_ids: [crm, {SITE_APP}]")
    (tmp_path / "policy.yaml").write_text(policy)
    accepted = gateway(tmp_path / "policy.yaml").changes_api.submit(submitter, CHANGE, "http://gw")
    assert accepted.status == 202, accepted.body


def awaiting(gw: Gateway, requested_by: str) -> None:
    record = a_change_record("c1", status=ChangeStatus.ACCEPTED, at=NOW)
    record = record.model_copy(
        update={"requested_by": record.requested_by.model_copy(update={"user_id": requested_by})}
    )
    opened = gw.journal.open(record, Step("accepted"))
    gw.journal.record(opened, [Step("awaiting_approval")], status=ChangeStatus.AWAITING_APPROVAL)


def decide(gw: Gateway, who: str) -> Any:
    response, _ = gw.approvals_api.decide_approval(
        headers(who), "c1", b'{"decision": "approve", "comment": "checked"}', "http://gw"
    )
    return response


def test_a_session_approves_as_the_person_and_is_not_the_requester() -> None:
    gw = gateway()
    awaiting(gw, requested_by=ALICE)
    assert decide(gw, session_header(ALICE, "Alice Reviewer", ROLE_APPROVE)).status == 403, "her own change"
    approved = decide(gw, session_header(BOB, "Bob Reviewer", ROLE_APPROVE))
    assert approved.status == 202, approved.body
    assert (
        approved.body["approval"]["decidedBy"] == BOB and approved.body["approval"]["decidedByName"] == "Bob Reviewer"
    )
    (event,) = [e for e in gw.change_store.lineage("c1") if e.event == "approved"]
    assert event.actor == BOB
