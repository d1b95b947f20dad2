"""One of two instances killed with ``kill -9`` while 20 changes are in flight, and never restarted: the other
instance takes its leased activities and locked messages over when their leases lapse, and every change ends,
none lost and none written twice."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import (
    FaultGateway,
    Invariants,
    Services,
    gateway_running,
    new_patient,
    update_body,
)

pytestmark = pytest.mark.faults

CHANGES = 20
SETTINGS = {
    # A message the killed instance had peek-locked comes back when its lock lapses: 5 s, not Service Bus's 60.
    "WRITEBACK_DEV_SERVICEBUS_LOCK_SECONDS": "5",
}


def activity_leases(state: Path) -> dict[str, int]:
    """How many activities each lease owner holds right now, read from the shared Durable state."""
    with sqlite3.connect(f"file:{state / 'durable.db'}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute(
            "SELECT leased_by, COUNT(*) FROM work WHERE leased_until > ? AND leased_by IS NOT NULL GROUP BY leased_by",
            (time.time(),),
        ).fetchall()
    return {str(owner): int(count) for owner, count in rows}


def kill_the_busiest_instance(gw: FaultGateway, timeout: float = 20.0) -> dict[str, Any]:
    """``kill -9`` the instance that holds the most activity leases (at least one) as soon as one does; its entry."""
    deadline = time.monotonic() + timeout
    while True:
        leases = activity_leases(gw.state)
        holders = [i for i in gw.live_instances() if leases.get(i["owner"], 0) > 0]
        if holders:
            victim = max(holders, key=lambda i: leases[i["owner"]])
            os.kill(victim["pid"], signal.SIGKILL)
            return victim
        assert time.monotonic() < deadline, "no instance ever held an activity"
        time.sleep(0.02)


def test_killing_one_of_two_instances_with_changes_in_flight_loses_and_repeats_nothing(
    services: Services, tmp_path: Path, invariants: Invariants
) -> None:
    fhir = services.fhir_server
    with gateway_running(services, tmp_path, SETTINGS) as gw:
        assert len(gw.live_instances()) == 2
        patients = [new_patient(gw, invariants.canary) for _ in range(CHANGES)]
        # The target answers slowly for a while, so activities are running when the instance dies.
        fhir.inject(delay_ms=700, count=2 * CHANGES)
        try:
            bodies = [
                update_body(p, f"kill {invariants.canary}", telecom=[{"system": "phone", "value": f"555-01{i:02}"}])
                for i, p in enumerate(patients)
            ]
            with concurrent.futures.ThreadPoolExecutor(max_workers=CHANGES) as pool:
                subs = list(pool.map(lambda b: invariants.submit(gw, b, label="in-flight"), bodies))
            assert all(s.change_id for s in subs), [s.codes for s in subs]
            victim = kill_the_busiest_instance(gw)
        finally:
            fhir.clear_faults()

        deadline = time.monotonic() + 10
        while victim["pid"] in {i["pid"] for i in gw.live_instances()}:
            assert time.monotonic() < deadline, "the killed instance is still listed"
            time.sleep(0.05)
        figures = invariants.check(gw, bound=90)
        survivors = gw.live_instances()
        assert len(survivors) == 1 and survivors[0]["pid"] != victim["pid"], "no restart"
        assert figures["completed"] == CHANGES, figures
        invariants.notes["killed"] = {"pid": victim["pid"], "groups": victim["groups"]}
