"""Conflicts at write time, their resolution, operator retries and bulk replay, end to end."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_approvals import awaiting, decide
from tools.services.process import REPO_ROOT

pytestmark = pytest.mark.e2e

OPERATE = ["Writeback.Operate"]
APPROVE = ["Writeback.Approve"]


def downstream_edit(gateway: Gateway, patient_id: str, **changes: Any) -> None:
    current = gateway.fhir(f"Patient/{patient_id}").json()
    current.pop("meta", None)
    assert gateway.fhir_put({**current, **changes}).status_code == 200


def test_a_412_with_disjoint_changes_is_merged_and_written(gateway: Gateway, patient: dict[str, Any]) -> None:
    change_id = awaiting(gateway, patient)  # plans a name change on the current version, then waits
    downstream_edit(gateway, patient["id"], telecom=[{"system": "email", "value": "moved@example.org"}])
    assert decide(gateway, change_id, "approve").status_code == 202
    done = gateway.wait(change_id)
    assert done["status"] == "completed", done
    stored = gateway.fhir(f"Patient/{patient['id']}").json()
    assert stored["name"][0]["family"] == "Renamed"
    assert stored["telecom"] == [{"system": "email", "value": "moved@example.org"}]  # not lost
    assert "merged-on-conflict" in [e["event"] for e in gateway.lineage(change_id)]


def test_overlapping_changes_are_a_conflict_that_an_approver_resolves(
    gateway: Gateway, patient: dict[str, Any]
) -> None:
    change_id = awaiting(gateway, patient)
    downstream_edit(gateway, patient["id"], name=[{"family": "Elsewhere"}])
    decide(gateway, change_id, "approve")
    done = gateway.wait(change_id)
    assert done["status"] == "conflict"
    assert done["plan"]["conflict"]["overlap"] == ["Patient.name"]
    assert gateway.fhir(f"Patient/{patient['id']}").json()["name"] == [{"family": "Elsewhere"}]
    # An approver re-plans it on the current version: through the policy again (the name still needs approval).
    resolve = httpx.post(
        f"{gateway.api}/changes/{change_id}/resolve",
        json={"action": "replan"},
        headers=gateway.headers("review-portal", APPROVE, user="approver-9"),
    )
    assert resolve.status_code == 202, resolve.text
    gateway.wait_for_status(change_id, "awaiting_approval")
    assert decide(gateway, change_id, "approve").status_code == 202
    assert gateway.wait(change_id)["status"] == "completed"
    assert gateway.fhir(f"Patient/{patient['id']}").json()["name"][0]["family"] == "Renamed"


def test_a_conflict_can_be_discarded(gateway: Gateway, patient: dict[str, Any]) -> None:
    change_id = awaiting(gateway, patient)
    downstream_edit(gateway, patient["id"], name=[{"family": "Elsewhere"}])
    decide(gateway, change_id, "approve")
    assert gateway.wait(change_id)["status"] == "conflict"
    headers = gateway.headers("review-portal", APPROVE, user="approver-9")
    resp = httpx.post(f"{gateway.api}/changes/{change_id}/resolve", json={"action": "discard"}, headers=headers)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    again = httpx.post(f"{gateway.api}/changes/{change_id}/resolve", json={"action": "discard"}, headers=headers)
    assert again.status_code == 409


def test_retry_and_bulk_replay_write_once(gateway: Gateway, patient: dict[str, Any]) -> None:
    ids = []
    for i in range(2):
        change_id = awaiting(gateway, patient)
        downstream_edit(gateway, patient["id"], name=[{"family": f"Other-{i}"}])
        decide(gateway, change_id, "approve")
        assert gateway.wait(change_id)["status"] == "conflict"
        ids.append(change_id)
    ops = gateway.headers("ops-console", OPERATE, user="op-1")
    listed = httpx.post(f"{gateway.api}/changes/replay", json={"status": "conflict", "dryRun": True}, headers=ops)
    assert listed.status_code == 200 and set(ids) <= set(listed.json()["matched"]) and listed.json()["retried"] == []
    assert httpx.post(f"{gateway.api}/changes/{ids[0]}/retry", headers=gateway.headers("crm")).status_code == 403
    one = httpx.post(f"{gateway.api}/changes/{ids[0]}/retry", headers=ops)
    assert one.status_code == 202 and one.json()["status"] == "accepted"
    assert httpx.post(f"{gateway.api}/changes/{ids[0]}/retry", headers=ops).status_code == 409  # not twice
    # Run again on the current version, the name change goes through the policy again: it needs approval again.
    gateway.wait_for_status(ids[0], "awaiting_approval")
    assert decide(gateway, ids[0], "approve").status_code == 202
    assert gateway.wait(ids[0])["status"] == "completed"
    # Bulk replay twice: the second finds nothing left to retry for these changes.
    body = {"status": "conflict", "dryRun": False, "limit": 1000}
    first = httpx.post(f"{gateway.api}/changes/replay", json=body, headers=ops).json()
    assert ids[1] in first["retried"] and ids[0] not in first["matched"]
    second = httpx.post(f"{gateway.api}/changes/replay", json=body, headers=ops).json()
    assert ids[1] not in second["matched"]
    # The name is already what this change wanted (the first one wrote it): nothing is left to write.
    replayed = gateway.wait(ids[1])
    assert replayed["status"] == "completed" and replayed["result"]["noChange"] is True
    history = gateway.fhir(f"Patient/{patient['id']}/_history").json()["entry"]
    tags = [e["resource"]["meta"].get("tag", []) for e in history]
    written = {c: sum({"system": "urn:writeback:change", "code": c} in t for t in tags) for c in ids}
    assert written == {ids[0]: 1, ids[1]: 0}


def test_replay_cli_lists_in_dry_run(gateway: Gateway, tmp_path: Any) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.replay",
            "--api",
            gateway.api,
            "--status",
            "conflict",
            "--dry-run",
            "--app",
            "ops-console",
            "--user",
            "op-1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout.lower()
