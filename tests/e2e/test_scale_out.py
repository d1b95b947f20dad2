"""The gateway scaled out: HTTP functions on one instance, the Durable, Service Bus and timer functions on another, as
Flex Consumption's per-function scaling can place them. Each change's approval is taken in by one process and its
write done by the other, so nothing one process remembers may decide what the other does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, put_patient, serve_gateway
from tests.e2e.test_approvals import awaiting, decide

pytestmark = pytest.mark.e2e

PINNED = "http;durable,servicebus,timer"
CHANGE_TAG = "urn:writeback:change"
OPERATE = ["Writeback.Operate"]


@pytest.fixture(scope="module")
def pinned(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    yield from serve_gateway(request, "pinned", WRITEBACK_DEV_INSTANCE_GROUPS=PINNED)


def versions_by_change(gw: Gateway, ref: str) -> list[str]:
    """The change tag of each version of ``ref`` after the first, oldest first ("" for a version without one)."""
    entries = gw.fhir(f"{ref}/_history").json()["entry"]
    tags = []
    for entry in reversed(entries[:-1]):
        codes = [t["code"] for t in entry["resource"]["meta"].get("tag", []) if t.get("system") == CHANGE_TAG]
        tags.append(codes[0] if codes else "")
    return tags


def test_the_instances_run_the_groups_they_are_pinned_to(pinned: Gateway) -> None:
    groups = sorted(tuple(i["groups"]) for i in pinned.live_instances())
    assert groups == [("durable", "servicebus", "timer"), ("http",)]
    durable_only = next(i for i in pinned.live_instances() if "http" not in i["groups"])
    # Its own port serves the runtime's routes (the queue, the Durable API), not the app's HTTP functions.
    assert httpx.get(f"{durable_only['url']}/api/v1/health/live", timeout=10).status_code == 404
    assert httpx.get(f"{durable_only['url']}/runtime/servicebus/writeback-changes", timeout=10).status_code == 200


def test_twenty_approved_changes_in_a_row_each_write_one_version(pinned: Gateway) -> None:
    """Before the app stopped deciding on its per-process cache of change records, the durable instance still held
    each change as awaiting approval after the HTTP instance had recorded the approval, and its write step found
    nothing to do: the change stayed ``writing`` and nothing was written."""
    for _ in range(20):
        patient = put_patient(pinned, f"p-{uuid.uuid4().hex[:12]}")
        change_id = awaiting(pinned, patient)
        assert decide(pinned, change_id, "approve").status_code == 202
        done = pinned.wait(change_id)
        assert done["status"] == "completed", done
        ref = f"Patient/{patient['id']}"
        assert pinned.fhir(ref).json()["name"][0]["family"] == "Renamed"
        assert versions_by_change(pinned, ref) == [change_id], "exactly one new version, the change's"


@pytest.mark.parametrize("which", ["pinned", "gateway"])
def test_an_operators_retry_completes_on_whichever_instance_takes_it(
    which: str, request: pytest.FixtureRequest, fhir_server: Any
) -> None:
    gw: Gateway = request.getfixturevalue(which)
    assert len(gw.live_instances()) == 2
    patient = put_patient(gw, f"p-{uuid.uuid4().hex[:12]}")
    ref = f"Patient/{patient['id']}"
    body = {
        "target": "local-ehr",
        "operation": "update",
        "resource": {
            **{k: v for k, v in patient.items() if k != "meta"},
            "telecom": [{"system": "phone", "value": "1"}],
        },
        "reason": "new phone",
    }
    # The target refuses the write (a transaction Bundle, with its Provenance) once: the change fails.
    fhir_server.inject(status=422, methods=["POST", "PUT"])
    try:
        resp = gw.submit(body)
        assert resp.status_code == 202, resp.text
        change_id = resp.json()["changeId"]
        assert gw.wait(change_id)["status"] == "failed"
    finally:
        fhir_server.clear_faults()
    ops = gw.headers("ops-console", OPERATE, user="op-1")
    retried = httpx.post(f"{gw.api}/changes/{change_id}/retry", headers=ops, timeout=30)
    assert retried.status_code == 202, retried.text
    done = gw.wait(change_id)
    assert done["status"] == "completed", done
    assert gw.fhir(ref).json()["telecom"] == [{"system": "phone", "value": "1"}]
    assert versions_by_change(gw, ref) == [change_id]
