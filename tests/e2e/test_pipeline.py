"""The write-back pipeline end to end: HTTP intake → local Service Bus → orchestration → the local FHIR server."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from devhost.durable.client_api import WEBHOOK_PATH
from tests.e2e.conftest import AUDIT, Gateway, heart_rate
from tests.e2e.test_approvals import decide

pytestmark = pytest.mark.e2e

CHANGE_TAG = "urn:writeback:change"


def update_body(patient: dict[str, Any], **changes: Any) -> dict[str, Any]:
    resource = {k: v for k, v in patient.items() if k != "meta"}
    resource.update(changes)
    return {"target": "local-ehr", "operation": "update", "resource": resource, "reason": "test"}


def history_total(gateway: Gateway, ref: str) -> int:
    bundle = gateway.fhir(f"{ref}/_history").json()
    return len(bundle.get("entry", []))


def test_update_goes_from_202_to_completed_with_version_provenance_and_lineage(
    gateway: Gateway, patient: dict[str, Any]
) -> None:
    ref = f"Patient/{patient['id']}"
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-0199", "use": "mobile"}])
    body["baseVersion"] = patient["meta"]["versionId"]
    resp = gateway.submit(body)
    assert resp.status_code == 202, resp.text
    change_id = resp.json()["changeId"]
    assert resp.headers["Location"] == f"{gateway.api}/changes/{change_id}"
    assert int(resp.headers["Retry-After"]) > 0
    done = gateway.wait(change_id)
    assert done["status"] == "completed", done
    result = done["result"]
    stored = gateway.fhir(ref).json()
    assert result["versionId"] == stored["meta"]["versionId"] != patient["meta"]["versionId"]
    assert not re.fullmatch(r"\d+", result["versionId"])  # opaque (UUID) versions pass through untouched
    assert result["verified"] is True
    assert stored["telecom"] == [{"system": "phone", "value": "555-0199", "use": "mobile"}]
    assert {"system": CHANGE_TAG, "code": change_id} in stored["meta"]["tag"]
    assert {"system": "urn:writeback:source", "code": "crm"} in stored["meta"]["tag"]
    provenance = gateway.fhir(result["provenance"]).json()
    assert provenance["target"][0]["reference"].startswith(ref)
    assert provenance["agent"][0]["who"]["identifier"]["value"] == "crm"
    assert done["plan"]["changedPaths"] == ["Patient.telecom"]
    assert done["plan"]["decision"] == "allow"
    events = [e["event"] for e in gateway.lineage(change_id)]
    assert events[0] == "accepted" and events[-1] == "completed"
    for step in ("planned", "decided", "writing", "written", "verified", "provenance"):
        assert step in events
    assert history_total(gateway, ref) == 2


def _patch(patient: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": f"Patient/{patient['id']}",
        "patch": ops,
        "baseVersion": f'W/"{patient["meta"]["versionId"]}"',
    }


def _versions(gateway: Gateway, ref: str) -> list[dict[str, Any]]:
    """The stored versions of ``ref``, newest first."""
    return [e["resource"] for e in gateway.fhir(f"{ref}/_history").json().get("entry", [])]


def test_patch_with_if_match(gateway: Gateway, fhir_server: Any, patient: dict[str, Any]) -> None:
    ref = f"Patient/{patient['id']}"
    planned = patient["meta"]["versionId"]
    # Nothing changes between plan and write: the write succeeds on the planned version, which it directly follows.
    resp = gateway.submit(_patch(patient, [{"op": "replace", "path": "/telecom/0/value", "value": "555-0142"}]))
    assert resp.status_code == 202, resp.text
    done = gateway.wait(resp.json()["changeId"])
    assert done["status"] == "completed", done
    stored = gateway.fhir(ref).json()
    assert stored["telecom"][0]["value"] == "555-0142"
    assert stored["meta"]["versionId"] == done["result"]["versionId"]
    assert [v["meta"]["versionId"] for v in _versions(gateway, ref)][1:] == [planned]

    # A name patch waits for approval after it is planned; someone else changes the name before the write. The
    # write carries If-Match with the version it planned on, so the FHIR server refuses it (412) and the overlap
    # ends as a conflict; a write without If-Match would overwrite the other change.
    patient = gateway.fhir(ref).json()
    planned = patient["meta"]["versionId"]
    resp = gateway.submit(_patch(patient, [{"op": "replace", "path": "/name/0/family", "value": "Renamed"}]))
    assert resp.status_code == 202, resp.text
    change_id = resp.json()["changeId"]
    waiting = gateway.wait_for_status(change_id, "awaiting_approval")
    assert waiting["approval"]["paths"] == ["Patient.name"]
    concurrent = {k: v for k, v in patient.items() if k != "meta"} | {"name": [{"family": "Elsewhere"}]}
    assert gateway.fhir_put(concurrent).status_code == 200
    theirs = gateway.fhir(ref).json()["meta"]["versionId"]
    assert theirs != planned
    fhir_server.reset_stats()
    assert decide(gateway, change_id, "approve").status_code == 202
    done = gateway.wait(change_id)
    assert done["status"] == "conflict", done
    assert done["plan"]["conflict"]["overlap"] == ["Patient.name"]
    assert fhir_server.stats()["byStatus"].get("412") == 1
    versions = _versions(gateway, ref)
    assert versions[0]["name"] == [{"family": "Elsewhere"}] and versions[0]["meta"]["versionId"] == theirs
    assert not any({"system": CHANGE_TAG, "code": change_id} in v["meta"].get("tag", []) for v in versions)


def test_create_vital_sign(gateway: Gateway, patient: dict[str, Any]) -> None:
    body = {"target": "local-ehr", "operation": "create", "resource": heart_rate(patient, 72)}
    resp = gateway.submit(body, app="vitals-app")
    assert resp.status_code == 202, resp.text
    done = gateway.wait(resp.json()["changeId"])
    assert done["status"] == "completed", done
    ref = done["result"]["resourceRef"]
    stored = gateway.fhir(ref).json()
    assert stored["valueQuantity"]["value"] == 72
    assert {"system": CHANGE_TAG, "code": done["changeId"]} in stored["meta"]["tag"]
    found = gateway.fhir(f"Observation?_tag={CHANGE_TAG}|{done['changeId']}").json()
    assert len(found.get("entry", [])) == 1


def test_dry_run_stops_at_planned_and_writes_nothing(gateway: Gateway, patient: dict[str, Any]) -> None:
    body = update_body(patient, address=[{"city": "Leeds"}])
    body["dryRun"] = True
    done = gateway.wait(gateway.submit(body).json()["changeId"])
    assert done["status"] == "planned"
    assert done["plan"]["changedPaths"] == ["Patient.address"]
    assert any(op["path"].startswith("/address") for op in done["plan"]["diff"])
    assert gateway.fhir(f"Patient/{patient['id']}").json()["meta"]["versionId"] == patient["meta"]["versionId"]


def test_policy_denies_a_field_the_source_does_not_own(gateway: Gateway, patient: dict[str, Any]) -> None:
    done = gateway.wait(gateway.submit(update_body(patient, gender="male")).json()["changeId"])
    assert done["status"] == "rejected"
    assert [i["path"] for i in done["error"]["issues"]] == ["Patient.gender"]
    assert gateway.fhir(f"Patient/{patient['id']}").json()["gender"] == "female"


def test_unchanged_update_completes_without_writing(gateway: Gateway, patient: dict[str, Any]) -> None:
    done = gateway.wait(gateway.submit(update_body(patient)).json()["changeId"])
    assert done["status"] == "completed" and done["result"]["noChange"] is True
    assert history_total(gateway, f"Patient/{patient['id']}") == 1


def test_three_way_merge_of_disjoint_changes(gateway: Gateway, patient: dict[str, Any]) -> None:
    base = patient["meta"]["versionId"]
    downstream = {**{k: v for k, v in patient.items() if k != "meta"}, "address": [{"city": "York"}]}
    assert gateway.fhir_put(downstream).status_code == 200
    body = update_body(patient, telecom=[{"system": "email", "value": "pat@example.org"}])
    body["baseVersion"] = base
    done = gateway.wait(gateway.submit(body).json()["changeId"])
    assert done["status"] == "completed", done
    stored = gateway.fhir(f"Patient/{patient['id']}").json()
    assert stored["address"] == [{"city": "York"}]  # the downstream change survived
    assert stored["telecom"] == [{"system": "email", "value": "pat@example.org"}]
    assert done["plan"]["merged"] is True and done["plan"]["downstreamPaths"] == ["Patient.address"]


def test_overlapping_changes_since_base_are_a_conflict(gateway: Gateway, patient: dict[str, Any]) -> None:
    base = patient["meta"]["versionId"]
    downstream = {
        **{k: v for k, v in patient.items() if k != "meta"},
        "telecom": [{"system": "phone", "value": "555-7777"}],
    }
    assert gateway.fhir_put(downstream).status_code == 200
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-8888"}])
    body["baseVersion"] = base
    done = gateway.wait(gateway.submit(body).json()["changeId"])
    assert done["status"] == "conflict"
    assert done["plan"]["conflict"]["overlap"] == ["Patient.telecom"]
    assert gateway.fhir(f"Patient/{patient['id']}").json()["telecom"][0]["value"] == "555-7777"


# --- idempotency ------------------------------------------------------------------------------------------


def test_missing_idempotency_key_is_400(gateway: Gateway, patient: dict[str, Any]) -> None:
    resp = gateway.submit(update_body(patient), key=False)  # type: ignore[arg-type]
    assert resp.status_code == 400
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.json()["issues"][0]["path"] == "Idempotency-Key"


def test_same_key_same_body_replays_and_writes_once(gateway: Gateway, patient: dict[str, Any]) -> None:
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-0303"}])
    key = f"k-{uuid.uuid4()}"
    first = gateway.submit(body, key=key)
    second = gateway.submit(body, key=key)
    assert first.status_code == second.status_code == 202
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert first.json() == second.json()
    gateway.wait(first.json()["changeId"])
    third = gateway.submit(body, key=key)
    assert third.json()["changeId"] == first.json()["changeId"]
    assert history_total(gateway, f"Patient/{patient['id']}") == 2


def test_same_key_different_body_is_422(gateway: Gateway, patient: dict[str, Any]) -> None:
    key = f"k-{uuid.uuid4()}"
    assert gateway.submit(update_body(patient, gender="female"), key=key).status_code == 202
    resp = gateway.submit(update_body(patient, birthDate="1990-01-01"), key=key)
    assert resp.status_code == 422
    assert resp.json()["issues"][0]["path"] == "Idempotency-Key"


def test_keys_are_scoped_per_caller(gateway: Gateway, patient: dict[str, Any]) -> None:
    key = f"k-{uuid.uuid4()}"
    body = update_body(patient)
    a = gateway.submit(body, key=key, app="crm")
    b = gateway.submit(body, key=key, app="crm", user="user-2")
    assert a.status_code == b.status_code == 202
    assert a.json()["changeId"] != b.json()["changeId"]


def test_duplicate_storm_one_key_many_concurrent_requests(gateway: Gateway, patient: dict[str, Any]) -> None:
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-0404"}])
    key = f"storm-{uuid.uuid4()}"
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: gateway.submit(body, key=key), range(40)))
    codes = {r.status_code for r in responses}
    assert codes <= {202, 409}, codes
    ids = {r.json()["changeId"] for r in responses if r.status_code == 202}
    assert len(ids) == 1
    conflicts = [r for r in responses if r.status_code == 409]
    assert all(r.json()["type"].endswith("idempotency-key-in-use") for r in conflicts)
    gateway.wait(ids.pop())
    assert history_total(gateway, f"Patient/{patient['id']}") == 2


# --- bad input: 4xx, nothing stored, nothing written ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "path"),
    [
        (b"{not json", 400, ""),
        (b"[]", 400, ""),
        (json.dumps({"target": "local-ehr", "operation": "update"}).encode(), 400, "/resource"),
        (
            json.dumps(
                {
                    "target": "nowhere",
                    "operation": "patch",
                    "resourceRef": "Patient/x",
                    "patch": [{"op": "remove", "path": "/a"}],
                }
            ).encode(),
            400,
            "/target",
        ),
        (
            json.dumps(
                {"target": "local-ehr", "operation": "patch", "resourceRef": "Patient/x", "patch": [], "colour": 1}
            ).encode(),
            400,
            "/colour",
        ),
        (
            json.dumps(
                {
                    "target": "local-ehr",
                    "operation": "create",
                    "resource": {"resourceType": "Patient", "gender": "robot"},
                }
            ).encode(),
            400,
            "Patient.gender",
        ),
        (
            json.dumps(
                {
                    "target": "local-ehr",
                    "operation": "create",
                    "resource": {
                        "resourceType": "Patient",
                        "managingOrganization": {"reference": "javascript:alert(1)"},
                    },
                }
            ).encode(),
            400,
            "Patient.managingOrganization.reference",
        ),
    ],
)
def test_bad_input_is_a_clear_4xx_naming_the_field(gateway: Gateway, raw: bytes, status: int, path: str) -> None:
    resp = gateway.submit(raw)
    assert resp.status_code == status, resp.text
    problem = resp.json()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert problem["status"] == status and problem["title"]
    assert path in [i["path"] for i in problem.get("issues", [])], problem
    if path.startswith("Patient."):
        assert problem["operationOutcome"]["resourceType"] == "OperationOutcome"


def test_oversized_body_is_413_before_parsing(gateway: Gateway) -> None:
    resp = gateway.submit(b"x" * (1_048_576 + 10))
    assert resp.status_code == 413
    assert resp.json()["type"].endswith("payload-too-large")


def test_bad_input_stores_nothing(gateway: Gateway) -> None:
    key = f"bad-{uuid.uuid4()}"
    assert gateway.submit(b"{oops", key=key).status_code == 400
    # The key was never claimed: a good request with it is taken in as new.
    good = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/pat-none",
        "patch": [{"op": "remove", "path": "/telecom"}],
    }
    resp = gateway.submit(good, key=key)
    assert resp.status_code == 202 and "Idempotent-Replayed" not in resp.headers


def test_unauthenticated_and_forbidden(gateway: Gateway, patient: dict[str, Any]) -> None:
    resp = httpx.post(f"{gateway.api}/changes", json=update_body(patient), headers={"Idempotency-Key": "x"})
    assert resp.status_code == 401
    resp = gateway.submit(update_body(patient), roles=["Writeback.Audit"])
    assert resp.status_code == 403


def test_unknown_change_is_404(gateway: Gateway) -> None:
    resp = gateway.status(str(uuid.uuid4()))
    assert resp.status_code == 404 and resp.json()["status"] == 404


# --- duplicates and reads --------------------------------------------------------------------------------


def test_a_message_delivered_twice_starts_nothing_new(gateway: Gateway, patient: dict[str, Any]) -> None:
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-0505"}])
    change_id = gateway.submit(body).json()["changeId"]
    gateway.wait(change_id)
    lineage_before = gateway.lineage(change_id)
    gateway.redeliver(change_id, 2)
    gateway.wait_queue_drained(5)
    assert gateway.lineage(change_id) == lineage_before
    assert history_total(gateway, f"Patient/{patient['id']}") == 2


def test_lineage_and_logs_hold_no_phi(gateway: Gateway, patient: dict[str, Any]) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    body = update_body(patient, telecom=[{"system": "email", "value": f"{canary}@example.org"}])
    body["reason"] = f"reason {canary}"
    change_id = gateway.submit(body).json()["changeId"]
    assert gateway.wait(change_id)["status"] == "completed"
    assert canary not in json.dumps(gateway.lineage(change_id))
    assert canary not in gateway.log_text()
    # ...while the target did receive the value and the Provenance the reason.
    assert canary in json.dumps(gateway.fhir(f"Patient/{patient['id']}").json())


def test_resource_lineage_newest_first_and_exception_queue(gateway: Gateway, patient: dict[str, Any]) -> None:
    first = gateway.submit(update_body(patient, telecom=[{"system": "phone", "value": "555-1"}])).json()["changeId"]
    gateway.wait(first)
    second = gateway.submit(update_body(patient, gender="other")).json()["changeId"]
    gateway.wait(second)
    resp = httpx.get(
        f"{gateway.api}/lineage/local-ehr/Patient/{patient['id']}", headers=gateway.headers("auditor", AUDIT)
    )
    assert resp.status_code == 200
    assert [c["changeId"] for c in resp.json()["changes"]] == [second, first]
    rejected = httpx.get(
        f"{gateway.api}/changes",
        params={"status": "rejected", "pageSize": "200"},
        headers=gateway.headers("auditor", AUDIT),
    )
    assert second in [c["changeId"] for c in rejected.json()["items"]]
    assert (
        httpx.get(f"{gateway.api}/changes", params={"status": "bogus"}, headers=gateway.headers("a", AUDIT)).status_code
        == 400
    )


def test_another_app_cannot_read_a_change(gateway: Gateway, patient: dict[str, Any]) -> None:
    change_id = gateway.submit(update_body(patient)).json()["changeId"]
    someone = gateway.headers("other-app", ["Writeback.Submit"], user="someone-else")
    assert httpx.get(f"{gateway.api}/changes/{change_id}", headers=someone).status_code == 404
    the_requester = gateway.headers("other-app", ["Writeback.Submit"])  # user-1 submitted it, through crm
    assert httpx.get(f"{gateway.api}/changes/{change_id}", headers=the_requester).status_code in (200, 202)


def test_a_message_for_an_unknown_change_ends_its_orchestration_and_a_foreign_one_is_dead_lettered(
    gateway: Gateway,
) -> None:
    """The dispatcher reads no record: the orchestration's first step finds no change and ends it, storing
    nothing; a body that is not a change message is refused until Service Bus dead-letters it."""
    unknown = str(uuid.uuid4())
    queue = f"{gateway.base}/runtime/servicebus/writeback-changes"
    message = {"changeId": unknown, "target": "local-ehr", "kind": "change"}
    assert httpx.post(f"{queue}/messages", json={"body": json.dumps(message), "messageId": unknown}).status_code == 201
    instance = f"{gateway.base}{WEBHOOK_PATH}/instances/{unknown}"
    deadline = time.monotonic() + 20
    while True:
        answer = httpx.get(instance)
        status = answer.json() if answer.status_code == 200 else {}
        if status.get("runtimeStatus") == "Completed":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["output"] == {"changeId": unknown, "status": "unknown"}
    assert gateway.status(unknown).status_code == 404
    foreign = str(uuid.uuid4())
    assert httpx.post(f"{queue}/messages", json={"body": "not json", "messageId": foreign}).status_code == 201
    while True:
        mine = [d for d in httpx.get(f"{queue}/deadletter").json() if d["messageId"] == foreign]
        if mine:
            break
        assert time.monotonic() < deadline + 20
        time.sleep(0.1)
    assert mine[0]["reason"] == "MaxDeliveryCountExceeded"
    assert mine[0]["deliveryCount"] == 10
