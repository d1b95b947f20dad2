"""Approvals, cancellation, expiry and the authorisation matrix, end to end through the local runtime."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, serve_gateway

pytestmark = pytest.mark.e2e

APPROVE = ["Writeback.Approve"]
OPERATE = ["Writeback.Operate"]
AUDIT = ["Writeback.Audit"]
SUBMIT = ["Writeback.Submit"]


def name_change(patient: dict[str, Any], family: str = "Renamed") -> dict[str, Any]:
    resource = {k: v for k, v in patient.items() if k != "meta"}
    resource["name"] = [{"family": family, "given": ["Pat"]}]
    return {"target": "local-ehr", "operation": "update", "resource": resource, "reason": "name correction"}


def decide(
    gateway: Gateway,
    change_id: str,
    decision: str,
    *,
    app: str = "review-portal",
    user: str = "approver-9",
    roles: list[str] | None = None,
    comment: str = "looks right",
) -> httpx.Response:
    return httpx.post(
        f"{gateway.api}/changes/{change_id}/approval",
        json={"decision": decision, "comment": comment},
        headers=gateway.headers(app, roles if roles is not None else APPROVE, user=user),
        timeout=30,
    )


def awaiting(gateway: Gateway, patient: dict[str, Any]) -> str:
    resp = gateway.submit(name_change(patient), user="user-1")
    assert resp.status_code == 202, resp.text
    change_id: str = resp.json()["changeId"]
    body = gateway.wait_for_status(change_id, "awaiting_approval")
    assert body["approval"]["required"] is True and body["approval"]["paths"] == ["Patient.name"]
    return change_id


def test_approved_change_is_written_with_the_approver_in_lineage_and_provenance(
    gateway: Gateway, patient: dict[str, Any]
) -> None:
    change_id = awaiting(gateway, patient)
    resp = decide(gateway, change_id, "approve")
    assert resp.status_code == 202, resp.text
    done = gateway.wait(change_id)
    assert done["status"] == "completed", done
    assert done["approval"]["decision"] == "approved" and done["approval"]["decidedBy"] == "approver-9"
    assert gateway.fhir(f"Patient/{patient['id']}").json()["name"][0]["family"] == "Renamed"
    provenance = gateway.fhir(done["result"]["provenance"]).json()
    verifier = [a for a in provenance["agent"] if a["type"]["coding"][0]["code"] == "verifier"]
    assert verifier[0]["who"]["identifier"]["value"] == "approver-9"
    approved = [e for e in gateway.lineage(change_id) if e["event"] == "approved"]
    assert approved[0]["actor"] == "approver-9" and "looks right" not in str(approved)
    # The same decision again is answered again; a different one is a 409.
    assert decide(gateway, change_id, "approve").status_code == 200
    assert decide(gateway, change_id, "reject").status_code == 409


def test_rejected_change_writes_nothing(gateway: Gateway, patient: dict[str, Any]) -> None:
    change_id = awaiting(gateway, patient)
    resp = decide(gateway, change_id, "reject", comment="wrong patient")
    assert resp.status_code == 200 and resp.json()["status"] == "rejected"
    assert gateway.wait(change_id)["status"] == "rejected"
    assert gateway.fhir(f"Patient/{patient['id']}").json()["name"][0]["family"] == "Tester"


def test_self_approval_and_missing_role_are_refused(gateway: Gateway, patient: dict[str, Any]) -> None:
    change_id = awaiting(gateway, patient)
    mine = decide(gateway, change_id, "approve", app="crm", user="user-1", roles=[*SUBMIT, *APPROVE])
    assert mine.status_code == 403 and mine.json()["type"].endswith("self-approval")
    assert decide(gateway, change_id, "approve", roles=AUDIT).status_code == 403
    bad = httpx.post(
        f"{gateway.api}/changes/{change_id}/approval", json={"decision": "maybe"}, headers=gateway.headers("x", APPROVE)
    )
    assert bad.status_code == 400 and bad.json()["issues"][0]["path"] == "/decision"
    assert gateway.wait_for_status(change_id, "awaiting_approval")


def test_cancel_by_the_requester_or_an_operator_only(gateway: Gateway, patient: dict[str, Any]) -> None:
    first = awaiting(gateway, patient)
    other = httpx.post(f"{gateway.api}/changes/{first}/cancel", headers=gateway.headers("crm", SUBMIT, user="user-2"))
    assert other.status_code == 404, "a colleague in the same app does not even see it"
    own = httpx.post(f"{gateway.api}/changes/{first}/cancel", headers=gateway.headers("crm", SUBMIT, user="user-1"))
    assert own.status_code == 200 and own.json()["status"] == "cancelled"
    assert gateway.wait(first)["status"] == "cancelled"
    again = httpx.post(f"{gateway.api}/changes/{first}/cancel", headers=gateway.headers("crm", SUBMIT, user="user-1"))
    assert again.status_code == 200
    second = awaiting(gateway, patient)
    ops = httpx.post(
        f"{gateway.api}/changes/{second}/cancel", headers=gateway.headers("ops-console", OPERATE, user="op")
    )
    assert ops.status_code == 200
    assert decide(gateway, second, "approve").status_code == 409
    assert gateway.fhir(f"Patient/{patient['id']}").json()["name"][0]["family"] == "Tester"


# --- expiry through the runtime's durable timers ----------------------------------------------------------


@pytest.fixture(scope="module")
def quick_gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    yield from serve_gateway(request, "quick", WRITEBACK_APPROVAL_TIMEOUT_HOURS=str(3 / 3600))


def test_no_decision_in_time_expires(quick_gateway: Gateway, patient: dict[str, Any]) -> None:
    resp = quick_gateway.submit(name_change(patient))
    done = quick_gateway.wait(resp.json()["changeId"], timeout=30)
    assert done["status"] == "expired" and done["approval"]["decision"] == "expired"
    assert decide(quick_gateway, done["changeId"], "approve").status_code == 409


# --- the authorisation matrix -----------------------------------------------------------------------------

ROLES = {"none": [], "submit": SUBMIT, "audit": AUDIT, "approve": APPROVE, "operate": OPERATE}


@pytest.fixture(scope="module")
def crm_change(gateway: Gateway) -> str:
    patient_id = f"m-{uuid.uuid4().hex[:8]}"
    assert gateway.fhir_put({"resourceType": "Patient", "id": patient_id, "gender": "female"}).status_code == 201
    body = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": f"Patient/{patient_id}",
        "patch": [{"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "1"}]}],
    }
    change_id: str = gateway.submit(body, user="user-1").json()["changeId"]
    gateway.wait(change_id)
    return change_id


# Who calls, against crm_change (submitted by user-1 through crm): the requesting person, the app acting as itself
# (an app-only token), a colleague of the requester in the same app, someone in another app.
CALLERS = {
    "requester": ("crm", "user-1"),
    "app-itself": ("crm", None),
    "colleague": ("crm", "someone"),
    "other-app": ("elsewhere", "someone"),
}


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize("who", list(CALLERS))
def test_authorisation_matrix(gateway: Gateway, crm_change: str, role: str, who: str) -> None:
    app, user = CALLERS[who]
    headers = gateway.headers(app, ROLES[role], user=user)
    reviewer = role in ("audit", "approve", "operate")
    # docs/security.md: reviewers read within their target scope (all targets here); a person with Submit reads
    # what they submitted; an app acting as itself with Submit reads its app's changes; nobody else reads anything.
    read_ok = reviewer or (role == "submit" and who in ("requester", "app-itself"))

    def get(path: str, **params: str) -> int:
        return httpx.get(f"{gateway.api}{path}", headers=headers, params=params, timeout=30).status_code

    assert get(f"/changes/{crm_change}") == (200 if read_ok else 404)
    assert get(f"/changes/{crm_change}/lineage") == (200 if read_ok else 404)
    assert get("/changes", status="completed") == (200 if reviewer else 403)
    assert get("/lineage/local-ehr/Patient/x") == (200 if role in ("audit", "operate") else 403)
    submit = httpx.post(f"{gateway.api}/changes", json={}, headers={**headers, "Idempotency-Key": "m"})
    assert submit.status_code == (400 if role == "submit" else 403)
    approval = httpx.post(f"{gateway.api}/changes/{crm_change}/approval", json={"decision": "approve"}, headers=headers)
    assert approval.status_code == (409 if role == "approve" else 403)  # it has ended: nothing to approve
    cancel = httpx.post(f"{gateway.api}/changes/{crm_change}/cancel", headers=headers)
    if not read_ok:
        expected_cancel = 404
    elif role == "operate" or (role == "submit" and who == "requester"):
        expected_cancel = 409  # it has ended
    else:
        expected_cancel = 403
    assert cancel.status_code == expected_cancel
    assert httpx.get(f"{gateway.api}/changes/{crm_change}", timeout=30).status_code == 401


def test_the_approval_comment_reaches_the_provenance_not_the_lineage(gateway: Gateway, patient: dict[str, Any]) -> None:
    change_id = awaiting(gateway, patient)
    comment = f"verified by phone {uuid.uuid4().hex[:6]}"
    assert decide(gateway, change_id, "approve", comment=comment).status_code == 202
    done = gateway.wait(change_id)
    provenance = gateway.fhir(done["result"]["provenance"]).json()
    assert {"text": f"Approval comment: {comment}"} in provenance["reason"]
    assert comment not in str(gateway.lineage(change_id))
