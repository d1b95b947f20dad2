"""A crash at every step: the gateway kills itself (SIGKILL) at a checkpoint, is started again on the same state,
and the client retries with the same Idempotency-Key. The change must complete exactly once.

The gateway is one process here (``instances=1``): the checkpoint kills the process that reaches it, and these tests
restart that process. A killed instance of two, taken over by the other, is ``tests/e2e/test_scale_out.py``."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import heart_rate
from tests.faults.conftest import (
    FaultGateway,
    Invariants,
    Services,
    history,
    launch_gateway,
    move_city,
    new_patient,
    restart_gateway,
    stop_gateway,
    tag_codes,
    update_body,
    wait_until_dead,
)

pytestmark = pytest.mark.faults

SETTINGS = {
    # The retry after the restart may finish an intake the crash cut off (by default only after 30 s).
    "WRITEBACK_INTAKE_STALE_AFTER_SECONDS": "1",
    # A message the dispatcher had peek-locked when the process died comes back when its lock lapses: 5 s, not 60.
    "WRITEBACK_DEV_SERVICEBUS_LOCK_SECONDS": "5",
}


def vital_sign(patient: dict[str, Any], canary: str) -> dict[str, Any]:
    observation = heart_rate(patient, 72, note=[{"text": f"taken by {canary}"}])
    return {"target": "local-ehr", "operation": "create", "resource": observation, "reason": f"vitals {canary}"}


@pytest.mark.parametrize(
    ("checkpoint", "operation"),
    [
        ("intake.after-claim", "update"),
        ("intake.after-record", "update"),
        ("intake.after-publish", "update"),
        ("prepare.after", "update"),
        ("write.before", "update"),
        ("write.after", "update"),
        ("write.after", "create"),
    ],
)
def test_a_crash_at_each_step_then_a_restart_completes_the_change_exactly_once(
    checkpoint: str, operation: str, services: Services, tmp_path: Any, invariants: Invariants
) -> None:
    gw: FaultGateway = launch_gateway(
        services, tmp_path, {**SETTINGS, "WRITEBACK_FAULT_KILL_AT": checkpoint}, instances=1
    )
    try:
        patient = new_patient(gw, invariants.canary)
        if operation == "create":
            sub = invariants.new(vital_sign(patient, invariants.canary), label=checkpoint, app="vitals-app")
        else:
            email = {"system": "email", "value": f"{invariants.canary}@example.org"}
            body = update_body(patient, f"crash at {checkpoint} {invariants.canary}", telecom=[email])
            sub = invariants.new(body, label=checkpoint)

        first = invariants.attempt(gw, sub)
        if checkpoint.startswith("intake."):
            assert first is None, "the connection dies with the process before any answer"
        else:
            assert first is not None and first.status_code == 202, first and first.text
        assert wait_until_dead(gw) == -signal.SIGKILL

        gw = restart_gateway(gw, SETTINGS)
        retry = invariants.resubmit(gw, sub, retry_for=30)
        assert retry is not None and retry.status_code == 202, retry and retry.text
        assert retry.headers.get("Idempotent-Replayed") == "true"

        invariants.check(gw, bound=30)
        assert sub.final is not None and sub.final["status"] == "completed", sub.final
        assert sub.final["result"]["verified"] is True
        ref = sub.ref or sub.final["result"]["resourceRef"]
        versions = gw.fhir(f"{ref}/_history").json()["entry"]
        assert len(versions) == (1 if operation == "create" else 2)
        assert sub.lineage is not None
        written = next(e for e in sub.lineage if e["event"] == "written")
        # After a crash past an update's write, the retried write meets a 412 and finds its own change tag (a repeated
        # create is absorbed by If-None-Exist instead).
        assert written["details"]["alreadyApplied"] is (checkpoint == "write.after" and operation == "update")
    finally:
        stop_gateway(gw)


def test_a_crash_after_the_write_then_a_downstream_write_before_the_restart_still_writes_once(
    services: Services, tmp_path: Any, invariants: Invariants
) -> None:
    """The gateway dies right after its write, and the Patient is edited at the target while it is down (another
    system's version on top of the change's). After the restart the change is done: it must complete with its one
    version, not write again."""
    gw: FaultGateway = launch_gateway(
        services, tmp_path, {**SETTINGS, "WRITEBACK_FAULT_KILL_AT": "write.after"}, instances=1
    )
    try:
        patient = new_patient(gw, invariants.canary)
        ref = f"Patient/{patient['id']}"
        email = {"system": "email", "value": f"{invariants.canary}@example.org"}
        sub = invariants.submit(gw, update_body(patient, "email", telecom=[email]), label="write.after+edit")
        assert wait_until_dead(gw) == -signal.SIGKILL
        current = gw.fhir(ref).json()
        assert sub.change_id in tag_codes(current), "the write landed before the crash"
        resp = move_city(gw, ref, current, "York")
        assert resp.status_code == 200, resp.text

        gw = restart_gateway(gw, SETTINGS)
        violations = invariants.violations(gw, bound=30)
        assert sub.final is not None
        tagged = [v for v in history(gw, ref) if sub.change_id in tag_codes(v)]
        assert len(tagged) == 1, f"{len(tagged)} versions carry the change; status {sub.final['status']}"
        assert sub.final["status"] == "completed", sub.final
        assert gw.fhir(ref).json()["address"][0]["city"] == "York"
        assert not violations, violations
    finally:
        stop_gateway(gw)


def test_a_crash_after_the_record_with_no_client_retry_is_finished_by_the_sweeper(
    services: Services, tmp_path: Any, invariants: Invariants
) -> None:
    """The process dies after storing the record and before publishing, and the client never comes back. The
    sweeper timer of the restarted gateway (its key-range read, on the real tables) publishes the change."""
    gw: FaultGateway = launch_gateway(
        services, tmp_path, {**SETTINGS, "WRITEBACK_FAULT_KILL_AT": "intake.after-record"}, instances=1
    )
    try:
        patient = new_patient(gw, invariants.canary)
        ref = f"Patient/{patient['id']}"
        email = {"system": "email", "value": f"{invariants.canary}@example.org"}
        sub = invariants.new(update_body(patient, f"sweeper {invariants.canary}", telecom=[email]), label="sweeper")
        assert invariants.attempt(gw, sub) is None, "the connection dies with the process before any answer"
        assert wait_until_dead(gw) == -signal.SIGKILL
        gw = restart_gateway(gw, SETTINGS)

        audit = gw.headers("auditor", ["Writeback.Audit"])
        deadline, final = time.monotonic() + 75, None
        while final is None:
            assert time.monotonic() < deadline, "the sweeper did not finish the change"
            listed = httpx.get(f"{gw.api}/changes", params={"target": "local-ehr"}, headers=audit, timeout=30)
            assert listed.status_code == 200, listed.text
            mine = [c for c in listed.json()["items"] if c.get("resourceRef") == ref]
            if mine and mine[0]["status"] == "completed":
                final = mine[0]
            time.sleep(0.5)
        assert len(history(gw, ref)) == 2, "written exactly once"
        lineage = httpx.get(f"{gw.api}/changes/{final['changeId']}/lineage", headers=audit, timeout=30).json()
        events = [e["event"] for e in lineage["events"]]
        assert events[:2] == ["accepted", "enqueued"] and events.count("written") == 1, events
    finally:
        stop_gateway(gw)
