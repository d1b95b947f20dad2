"""Table and Blob storage that stop answering, under the gateway running in the local runtime.

The gateway here has an Azurite of its own, paused with SIGSTOP (connections are accepted, nothing answers) and
resumed with SIGCONT, and short storage limits (``WRITEBACK_STORAGE_*``: 1 s to connect, 1 s per read, 1 retry).
Through the HTTP API a caller gets ``503`` problem+json ``storage-unavailable`` with ``Retry-After``, promptly, and
the liveness probe still answers; a change under way when storage pauses for a few seconds is not failed: its
activity raises the retryable storage error, the orchestration retries it, and the change completes once storage
answers again, written once.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults.conftest import FaultGateway, Services, gateway_running, history, new_patient, update_body
from tools.services.azurite import Azurite, paused, start_azurite

pytestmark = pytest.mark.faults

PROBLEM_TYPE = "urn:writeback:problem:storage-unavailable"
LIMITS = {
    "WRITEBACK_STORAGE_CONNECT_TIMEOUT_SECONDS": "1",
    "WRITEBACK_STORAGE_READ_TIMEOUT_SECONDS": "1",
    "WRITEBACK_STORAGE_RETRIES": "1",
}
ANSWER_WITHIN_SECONDS = 10.0


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    service = start_azurite(log_dir=tmp_path_factory.mktemp("storage-faults-logs"))
    yield service
    os.killpg(service.process.pid, signal.SIGCONT)
    service.stop()


@pytest.fixture(scope="module")
def gateway(
    own_azurite: Azurite, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultGateway]:
    own = Services(own_azurite, services.token_endpoint, services.fhir_server, services.fhir_token)
    with gateway_running(own, tmp_path_factory.mktemp("storage-faults"), LIMITS) as gw:
        yield gw


def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    resp = call()
    return resp, time.monotonic() - started


def assert_unavailable(resp: httpx.Response, took: float) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["type"] == PROBLEM_TYPE
    assert int(resp.headers["Retry-After"]) >= 1
    assert took < ANSWER_WITHIN_SECONDS, f"answered after {took:.1f} s"


def test_a_paused_storage_is_a_prompt_503_through_the_api(gateway: FaultGateway, own_azurite: Azurite) -> None:
    patient = new_patient(gateway, "canary-" + uuid.uuid4().hex[:8])
    first = gateway.submit(update_body(patient, "storage up", telecom=[{"system": "phone", "value": "555-0101"}]))
    assert first.status_code == 202, first.text
    change_id = first.json()["changeId"]
    assert gateway.wait(change_id)["status"] == "completed"

    with paused(own_azurite):
        body = update_body(patient, "storage paused", telecom=[{"system": "phone", "value": "555-0102"}])
        assert_unavailable(*timed(lambda: gateway.submit(body)))
        assert_unavailable(*timed(lambda: gateway.status(change_id)))
        assert_unavailable(
            *timed(
                lambda: httpx.get(f"{gateway.api}/changes/{change_id}/lineage", headers=gateway.headers(), timeout=30)
            )
        )
        health, took = timed(lambda: httpx.get(f"{gateway.api}/health", timeout=30))
        assert health.status_code == 503 and took < 2 * ANSWER_WITHIN_SECONDS
        assert health.json()["dependencies"]["tableStorage"]["state"] == "unavailable"
        assert httpx.get(f"{gateway.api}/health/live", timeout=5).status_code == 200

    resp = gateway.status(change_id)
    assert resp.status_code == 200 and resp.json()["status"] == "completed", resp.text


def test_a_change_under_way_when_storage_pauses_completes_once_it_answers(
    gateway: FaultGateway, own_azurite: Azurite, services: Services
) -> None:
    patient = new_patient(gateway, "canary-" + uuid.uuid4().hex[:8])
    ref = f"Patient/{patient['id']}"
    before = len(history(gateway, ref))
    # The write (a transaction Bundle, POST) is held 3 s at the target: storage pauses meanwhile, so the write
    # step's journal transition after it meets the outage.
    services.fhir_server.inject(delay_ms=3000, count=1, methods=["POST"])
    try:
        accepted = gateway.submit(update_body(patient, "mid-way", telecom=[{"system": "phone", "value": "555-0103"}]))
        assert accepted.status_code == 202, accepted.text
        change_id = accepted.json()["changeId"]
        gateway.wait_for_status(change_id, "writing", timeout=10)
        with paused(own_azurite):
            time.sleep(6)  # past the held write and the 1 s read timeout of the transition after it
    finally:
        services.fhir_server.clear_faults()
    done = gateway.wait(change_id, timeout=60)
    assert done["status"] == "completed", done
    assert len(history(gateway, ref)) == before + 1, "written once"
    # The orchestration's history (the Durable status API) shows the write step failing on the outage, then retried.
    status = httpx.get(
        f"{gateway.base}/runtime/webhooks/durabletask/instances/{change_id}", params={"showHistory": "true"}, timeout=10
    ).json()
    failures = [e.get("Reason", "") for e in status["historyEvents"] if e["EventType"] == "TaskFailed"]
    assert failures and all("storage" in reason for reason in failures), failures
