"""A target that throttles, fails and times out at random: changes may end ``failed`` when their retries run out,
but none may be lost, written twice, or written without its approval.

The target's timeout comes from the targets file; the gateway here reads a copy of ``config/targets.yaml`` with a
2 s timeout (``WRITEBACK_TARGETS_FILE``), so an injected 2.5 s delay is a client timeout without 10 s waits.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import heart_rate
from tests.faults.conftest import (
    CHANGE_TAG,
    FaultGateway,
    Invariants,
    Services,
    Submission,
    gateway_running,
    history,
    move_city,
    new_patient,
    tag_codes,
    targets_with_timeout,
    update_body,
)

pytestmark = pytest.mark.faults

TIMEOUT_SECONDS = 2
SLOW_MS = 2500  # past the 2 s timeout
# The mix: 30 % throttled (429, Retry-After 1), 10 % unavailable (503), 5 % too slow, 3 % after the request
# was carried out (the write happened, its answer is lost) and 2 % before it (carried out after the client gave up).
# Each rule has a budget: a change's step is retried with exponential backoff from 2 s (shared/app/pipeline.py), so at
# 45 % for the whole run one change's run of 5-7 failed calls (likely among some 80) would wait 1-4 minutes. With
# the budgets the faults hit the first burst of calls, as hard as the issue asks, and the retries then get through.
RULES = [
    {"probability": 0.30, "status": 429, "retry_after": 1, "count": 12},
    {"probability": 0.10, "status": 503, "count": 4},
    {"probability": 0.03, "delay_ms": SLOW_MS, "after": True, "count": 2},
    {"probability": 0.02, "delay_ms": SLOW_MS, "count": 1},
]
SEED = 20261125


@pytest.fixture(scope="module")
def gateway(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultGateway]:
    state = tmp_path_factory.mktemp("downstream")
    # 7 s to decide: a change left without a decision expires within the test's bound.
    settings = {**targets_with_timeout(state, TIMEOUT_SECONDS), "WRITEBACK_APPROVAL_TIMEOUT_HOURS": "0.002"}
    with gateway_running(services, state, settings) as gw:
        yield gw


def test_the_fhir_server_injects_faults_at_random_repeatably(services: Services) -> None:
    fhir = services.fhir_server
    try:

        def run() -> list[int]:
            fhir.inject_random(
                [{"probability": 0.3, "status": 429, "retry_after": 1}, {"probability": 0.1, "status": 503}], seed=7
            )
            with httpx.Client(timeout=10) as client:
                return [client.get(f"{fhir.base_url}/metadata").status_code for _ in range(200)]

        fhir.reset_stats()
        first = run()
        stats = fhir.stats()
        fhir.clear_faults()
        assert run() == first
        codes = Counter(first)
        assert 40 <= codes[429] <= 80 and 8 <= codes[503] <= 35 and set(codes) == {200, 429, 503}, codes
        assert stats["faultsByKind"] == {"429": codes[429], "503": codes[503]}
        assert stats["faultsServed"] == codes[429] + codes[503] and stats["seed"] == 7
        assert [r["served"] for r in stats["pendingFaults"]] == [codes[429], codes[503]]
    finally:
        fhir.clear_faults()
    assert fhir.stats()["pendingFaults"] == []
    with pytest.raises(httpx.HTTPStatusError):
        fhir.inject_random([{"probability": 0.7, "status": 429}, {"probability": 0.4, "status": 503}])


def _decide(gw: FaultGateway, change_id: str) -> httpx.Response:
    return httpx.post(
        f"{gw.api}/changes/{change_id}/approval",
        json={"decision": "approve", "comment": "ok"},
        headers=gw.headers("review-portal", ["Writeback.Approve"], user="approver-9"),
        timeout=30,
    )


def test_changes_under_random_429_503_and_timeouts_are_neither_lost_nor_duplicated(
    gateway: FaultGateway, services: Services, invariants: Invariants
) -> None:
    canary = invariants.canary
    fhir = services.fhir_server
    distinct = [new_patient(gateway, canary) for _ in range(12)]
    chain_patient = new_patient(gateway, canary)
    approval_patients = [new_patient(gateway, canary) for _ in range(2)]

    def distinct_body(i: int, patient: dict[str, Any]) -> dict[str, Any]:
        if i % 2:
            return {
                "target": "local-ehr",
                "operation": "patch",
                "resourceRef": f"Patient/{patient['id']}",
                "patch": [{"op": "replace", "path": "/telecom/0/value", "value": f"{canary}-{i}"}],
                "reason": "phone correction",
            }
        email = {"system": "email", "value": f"{canary}-{i}@example.org"}
        return update_body(patient, "email correction", telecom=[email])

    def vital_sign(i: int) -> dict[str, Any]:
        observation = heart_rate(distinct[i], 60 + i, note=[{"text": canary}])
        return {"target": "local-ehr", "operation": "create", "resource": observation}

    def chain() -> list[Submission]:
        """Sequential changes to one Patient, each after the previous one ended: each adds a phone number."""
        subs = []
        for k in range(4):
            body = {
                "target": "local-ehr",
                "operation": "patch",
                "resourceRef": f"Patient/{chain_patient['id']}",
                "patch": [{"op": "add", "path": "/telecom/-", "value": {"system": "phone", "value": f"{canary}-c{k}"}}],
            }
            sub = invariants.submit(gateway, body, label=f"chain-{k}", retry_for=30)
            assert sub.change_id, sub.codes
            invariants.wait_for(gateway, sub, {"completed", "failed", "conflict", "rejected"}, 120)
            subs.append(sub)
        return subs

    def approval(approve: bool) -> Submission:
        patient = approval_patients[approve]
        body = update_body(patient, "name", name=[{"family": f"Renamed{approve}", "given": ["Pat"]}])
        sub = invariants.submit(
            gateway, body, label="approved" if approve else "unapproved", approval_withheld=not approve
        )
        assert sub.change_id, sub.codes
        if approve:
            invariants.wait_for(gateway, sub, {"awaiting_approval"}, 60)
            resp = _decide(gateway, sub.change_id)
            assert resp.status_code == 202, resp.text
        return sub

    fhir.reset_stats()
    served = fhir.inject_random(RULES, seed=SEED)
    assert len(served["rules"]) == len(RULES)
    # On top of chance: the first write is carried out but answered too late (the ambiguous case).
    fhir.inject(delay_ms=SLOW_MS, methods=["POST"], after=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            chained = pool.submit(chain)
            approvals = [pool.submit(approval, flag) for flag in (True, False)]
            singles = list(
                pool.map(
                    lambda ip: invariants.submit(gateway, distinct_body(*ip), label=f"single-{ip[0]}"),
                    enumerate(distinct),
                )
            )
            creates = list(
                pool.map(
                    lambda i: invariants.submit(gateway, vital_sign(i), label=f"create-{i}", app="vitals-app"), range(3)
                )
            )
            chain_subs = chained.result()
            approved, unapproved = (f.result() for f in approvals)
        invariants.settle(gateway, 120)
    finally:
        stats = fhir.stats()
        fhir.clear_faults()
    invariants.notes["fhirRequests"] = stats["requests"]
    invariants.notes["faultsByKind"] = stats["faultsByKind"]

    figures = invariants.check(gateway, bound=30)
    assert figures["acknowledged"] == figures["cases"] == 12 + 3 + 4 + 2
    assert stats["faultsByKind"]["delay+after"] >= 1 and stats["faultsByKind"].get("429", 0) > 0
    for sub in [*singles, *creates, *chain_subs]:
        assert sub.final is not None and sub.final["status"] in ("completed", "failed"), (sub.label, sub.final)
    assert unapproved.final is not None and unapproved.final["status"] == "expired"
    assert approved.final is not None and approved.final["status"] in ("completed", "failed")

    # The sequential changes: the Patient holds exactly the phone numbers of the changes whose versions exist, in
    # the order they were made; every completed one is among them.
    versions = history(gateway, f"Patient/{chain_patient['id']}")
    landed = [s for s in chain_subs if any(s.change_id in tag_codes(v) for v in versions)]
    assert {s.change_id for s in chain_subs if s.final and s.final["status"] == "completed"} <= {
        s.change_id for s in landed
    }
    phones = [t["value"] for t in versions[-1]["telecom"]]
    assert phones == ["555-0000"] + [f"{canary}-c{s.label.split('-')[1]}" for s in landed]


def test_a_write_whose_answer_is_lost_then_overwritten_downstream_is_written_once(
    gateway: FaultGateway, services: Services, invariants: Invariants
) -> None:
    """The target carries the write out but its answer comes too late; before the retry, another system writes the
    Patient. The change is done (its version is in the history): the retry must recognise it, neither writing it
    again nor reporting a conflict."""
    fhir = services.fhir_server
    patient = new_patient(gateway, invariants.canary)
    ref = f"Patient/{patient['id']}"
    email = {"system": "email", "value": f"{invariants.canary}@example.org"}
    fhir.inject(delay_ms=SLOW_MS + 1000, methods=["POST"], after=True)
    try:
        sub = invariants.submit(gateway, update_body(patient, "email", telecom=[email]), label="lost-answer")
        deadline = time.monotonic() + 20
        while not tag_codes(current := gateway.fhir(ref).json()):
            assert time.monotonic() < deadline, "the write never reached the target"
            time.sleep(0.02)
        assert sub.change_id in tag_codes(current)
        resp = move_city(gateway, ref, current, "York")
        assert resp.status_code == 200, resp.text
    finally:
        fhir.clear_faults()
    violations = invariants.violations(gateway)
    assert sub.final is not None
    tagged = [v for v in history(gateway, ref) if sub.change_id in tag_codes(v)]
    assert len(tagged) == 1, f"{len(tagged)} versions carry the change; status {sub.final['status']}"
    assert sub.final["status"] == "completed", sub.final
    assert sub.final["result"]["versionId"] == tagged[0]["meta"]["versionId"]
    assert gateway.fhir(ref).json()["address"][0]["city"] == "York"
    found = gateway.fhir(f"Provenance?_tag={CHANGE_TAG}|{sub.change_id}").json()
    assert len(found.get("entry", [])) == 1
    assert not violations, violations
