"""Duplicates and races: one request sent 200 times at once, one Service Bus message delivered five times, and ten
changes to one Patient at once while another system writes to it directly."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults.conftest import (
    CHANGE_TAG,
    FaultGateway,
    Invariants,
    Services,
    gateway_running,
    history,
    move_city,
    new_patient,
    update_body,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def gateway(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultGateway]:
    with gateway_running(services, tmp_path_factory.mktemp("storms")) as gw:
        yield gw


def test_one_request_sent_200_times_at_once_is_one_change_and_one_version(
    gateway: FaultGateway, invariants: Invariants
) -> None:
    patient = new_patient(gateway, invariants.canary)
    email = {"system": "email", "value": f"{invariants.canary}@example.org"}
    sub = invariants.new(update_body(patient, f"storm {invariants.canary}", telecom=[email]), label="storm")
    start = threading.Barrier(50)

    def send(_: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # fewer than 50 left: go anyway
            start.wait(timeout=10)
        invariants.attempt(gateway, sub)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(send, range(200)))

    codes = Counter(sub.codes)
    assert set(codes) <= {202, 409}, codes
    assert codes[202] >= 1 and sum(codes.values()) == 200
    assert len(sub.change_ids) == 1
    invariants.check(gateway, bound=30)
    assert sub.final is not None and sub.final["status"] == "completed"
    assert len(history(gateway, f"Patient/{patient['id']}")) == 2


def test_a_message_delivered_five_times_while_running_and_after_completion_writes_nothing_more(
    gateway: FaultGateway, services: Services, invariants: Invariants
) -> None:
    fhir = services.fhir_server
    done_patient, running_patient = new_patient(gateway, invariants.canary), new_patient(gateway, invariants.canary)
    email = {"system": "email", "value": f"{invariants.canary}@example.org"}
    done = invariants.submit(gateway, update_body(done_patient, "done", telecom=[email]), label="after-completion")
    invariants.settle(gateway, 30)
    assert done.final is not None and done.final["status"] == "completed"
    lineage_before = gateway.lineage(done.change_id or "")

    # The prepare step's read hangs for 2 s, so the duplicates arrive while its orchestration runs.
    fhir.reset_stats()
    fhir.inject(delay_ms=2000, methods=["GET"])
    try:
        running = invariants.submit(gateway, update_body(running_patient, "running", telecom=[email]), label="running")
        deadline = time.monotonic() + 10
        while fhir.stats()["faultsServed"] == 0:
            assert time.monotonic() < deadline, "the change's read never reached the FHIR server"
            time.sleep(0.02)
        gateway.redeliver(running.change_id or "", 5)
        assert gateway.status(running.change_id or "").json()["status"] not in ("completed", "failed")
    finally:
        fhir.clear_faults()
    gateway.redeliver(done.change_id or "", 5)

    invariants.check(gateway, bound=30)
    gateway.wait_queue_drained()
    assert gateway.lineage(done.change_id or "") == lineage_before
    assert running.lineage is not None and gateway.lineage(running.change_id or "") == running.lineage
    assert running.final is not None and running.final["status"] == "completed"
    events = Counter(e["event"] for e in running.lineage)
    assert max(events.values()) == 1, events
    for patient in (done_patient, running_patient):
        assert len(history(gateway, f"Patient/{patient['id']}")) == 2
    letters = httpx.get(f"{gateway.base}/runtime/servicebus/writeback-changes/deadletter", timeout=10).json()
    assert not [d for d in letters if d["messageId"].startswith((done.change_id or "-", running.change_id or "-"))]


class DirectWriter:
    """Another system writing the Patient's address straight to the target, version-checked as a careful EHR client
    would (If-Match, re-read on 412), and without the gateway's tags."""

    def __init__(self, gw: FaultGateway, ref: str) -> None:
        self.gw, self.ref = gw, ref
        self.writes: list[tuple[str, str, str]] = []  # (version read, version written, city)

    def write(self, city: str) -> None:
        while True:
            current = self.gw.fhir(self.ref).json()
            read = current["meta"]["versionId"]
            resp = move_city(self.gw, self.ref, current, city)
            if resp.status_code == 412:
                continue
            assert resp.status_code == 200, resp.text
            self.writes.append((read, resp.json()["meta"]["versionId"], city))
            return


def test_concurrent_writers_to_one_patient_never_lose_an_update(gateway: FaultGateway, invariants: Invariants) -> None:
    phones = [{"system": "phone", "value": f"555-010{i}", "use": "home"} for i in range(10)]
    patient = new_patient(gateway, invariants.canary, telecom=phones)
    ref = f"Patient/{patient['id']}"
    base = patient["meta"]["versionId"]
    direct = DirectWriter(gateway, ref)

    def change(i: int) -> dict[str, Any]:
        value = f"{invariants.canary}-{i}"
        if i % 2:  # a JSON Patch of one entry, planned on whatever version is current
            body: dict[str, Any] = {
                "target": "local-ehr",
                "operation": "patch",
                "resourceRef": ref,
                "patch": [{"op": "replace", "path": f"/telecom/{i}/value", "value": value}],
            }
        else:  # the whole resource as read at the base version: merged onto a newer one, or a conflict
            telecom = [dict(p) for p in phones]
            telecom[i]["value"] = value
            body = update_body(patient, f"writer {i}", telecom=telecom)
            body["baseVersion"] = base
        return body

    def direct_writes() -> None:
        for k in range(3):
            time.sleep(0.15)
            direct.write(f"Direct-{k}-{uuid.uuid4().hex[:6]}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=11) as pool:
        writer = pool.submit(direct_writes)
        subs = list(pool.map(lambda i: invariants.submit(gateway, change(i), label=f"writer-{i}"), range(10)))
        writer.result()

    figures = invariants.check(gateway, bound=60)
    assert figures["acknowledged"] == 10
    statuses = Counter(s.final["status"] for s in subs if s.final)
    assert set(statuses) <= {"completed", "conflict", "failed"}, statuses
    assert statuses["completed"] >= 1
    completed = [s for s in subs if s.final and s.final["status"] == "completed"]
    claimed = [next(e for e in s.lineage or [] if e["event"] == "written")["details"]["ifMatch"] for s in completed]
    assert len(set(claimed)) == len(claimed), "two completed changes wrote on top of the same version"

    versions = history(gateway, ref)
    order = [v["meta"]["versionId"] for v in versions]
    predecessors = {v: order[i - 1] for i, v in enumerate(order) if i}
    for read, wrote, _ in direct.writes:
        assert predecessors[wrote] == read
    # Every version but the first has one author: a completed change or the direct writer, each on what it read.
    authors: Counter[str] = Counter()
    for version in versions[1:]:
        codes = {t["code"] for t in version["meta"].get("tag", []) if t["system"] == CHANGE_TAG}
        authors["gateway" if codes else "direct"] += 1
    assert authors == {"gateway": statuses["completed"], "direct": len(direct.writes)}
    assert versions[-1]["address"][0]["city"] == direct.writes[-1][2]
    for sub in subs:
        i = int(sub.label.split("-")[1])
        assert sub.final is not None
        if sub.final["status"] == "completed":
            mine = versions[order.index(sub.final["result"]["versionId"])]
            assert mine["telecom"][i]["value"] == f"{invariants.canary}-{i}"
