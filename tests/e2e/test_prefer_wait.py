"""``Prefer: wait=N`` through the local runtime, on two instances: the answer is held until the change settles.

The waiting request reads the change from storage, so it works whichever instance runs the change: one test pins
the HTTP functions to one instance and the pipeline to the other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Gateway, put_patient, serve_gateway
from tests.e2e.test_pipeline import update_body

pytestmark = pytest.mark.e2e


def submit_waiting(gateway: Gateway, body: dict[str, Any], wait: int) -> tuple[httpx.Response, float]:
    headers = {**gateway.headers(), "Idempotency-Key": str(uuid.uuid4()), "Prefer": f"wait={wait}"}
    started = time.monotonic()
    resp = httpx.post(f"{gateway.api}/changes", json=body, headers=headers, timeout=wait + 30)
    return resp, time.monotonic() - started


def test_a_change_that_ends_within_the_wait_answers_200_with_its_status(
    gateway: Gateway, patient: dict[str, Any]
) -> None:
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-0101"}])
    resp, _ = submit_waiting(gateway, body, 20)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "completed"
    assert resp.headers["Preference-Applied"] == "wait=20"
    assert resp.headers["Vary"] == "Prefer"
    assert "Location" not in resp.headers
    stored = gateway.fhir(f"Patient/{patient['id']}").json()
    assert stored["meta"]["versionId"] == resp.json()["result"]["versionId"]


def test_a_change_awaiting_approval_answers_202_as_soon_as_it_gets_there(
    gateway: Gateway, patient: dict[str, Any]
) -> None:
    body = update_body(patient, name=[{"family": "Waiting"}])
    resp, elapsed = submit_waiting(gateway, body, 25)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "awaiting_approval"
    assert elapsed < 15, f"held {elapsed:.1f} s: the answer should come when the change awaits a person"
    assert int(resp.headers["Retry-After"]) >= 60
    assert resp.headers["Preference-Applied"] == "wait=25"
    again = httpx.get(resp.headers["Location"], headers={**gateway.headers(), "Prefer": "wait=25"}, timeout=40)
    assert again.status_code == 202 and again.json()["status"] == "awaiting_approval"


def test_without_the_header_nothing_changes_and_a_running_change_says_retry_after_1(
    gateway: Gateway, patient: dict[str, Any]
) -> None:
    resp = gateway.submit(update_body(patient, telecom=[{"system": "phone", "value": "555-0102"}]))
    assert resp.status_code == 202
    assert resp.headers["Retry-After"] == "1"
    assert resp.headers["Vary"] == "Prefer"
    assert "Preference-Applied" not in resp.headers
    gateway.wait(resp.json()["changeId"])


def test_a_wait_on_get_answers_when_the_change_ends(gateway: Gateway, patient: dict[str, Any]) -> None:
    resp = gateway.submit(update_body(patient, telecom=[{"system": "phone", "value": "555-0103"}]))
    got = httpx.get(resp.headers["Location"], headers={**gateway.headers(), "Prefer": "wait=20"}, timeout=40)
    assert got.status_code == 200, got.text
    assert got.json()["status"] == "completed"


@pytest.fixture(scope="module")
def split_gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """HTTP on the first instance only; the dispatcher, orchestrations and activities on the second."""
    yield from serve_gateway(request, "split-gateway", WRITEBACK_DEV_INSTANCE_GROUPS="http;durable,servicebus,timer")


def test_a_wait_is_answered_by_an_instance_that_does_not_run_the_change(split_gateway: Gateway) -> None:
    runs_http = [i for i in split_gateway.live_instances() if "http" in i["groups"]]
    assert len(runs_http) == 1, split_gateway.live_instances()
    patient = put_patient(split_gateway, f"p-{uuid.uuid4().hex[:12]}")
    body = update_body(patient, telecom=[{"system": "phone", "value": "555-0104"}])
    resp, _ = submit_waiting(split_gateway, body, 20)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "completed"
