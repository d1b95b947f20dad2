"""The gateway itself, run by the local runtime as a separate process against the real local services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from devhost.endpoints import gateway_environment
from shared.api.caller_identity import encode_easyauth_principal
from tools.services.process import REPO_ROOT, free_port

SUBMIT = ["Writeback.Submit"]
AUDIT = ["Writeback.Audit"]
TERMINAL = {"completed", "planned", "rejected", "conflict", "failed", "expired", "cancelled"}
CHANGE_QUEUE = "writeback-changes"


@dataclass
class Gateway:
    base: str
    log_path: Path
    fhir_base: str
    fhir_token: str
    proc: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return f"{self.base}/api/v1"

    def headers(self, app: str = "crm", roles: list[str] | None = None, user: str | None = "user-1") -> dict[str, str]:
        principal = encode_easyauth_principal(
            app, roles if roles is not None else SUBMIT, user_id=user, name="Test User"
        )
        return {"X-MS-CLIENT-PRINCIPAL": principal}

    def submit(
        self, body: dict[str, Any] | bytes, *, key: str | Literal[False] | None = None, app: str = "crm", **kw: Any
    ) -> httpx.Response:
        headers = self.headers(app, **kw)
        if key is not False:
            headers["Idempotency-Key"] = key or str(uuid.uuid4())
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        headers["Content-Type"] = "application/json"
        return httpx.post(f"{self.api}/changes", content=content, headers=headers, timeout=30)

    def status(self, change_id: str, app: str = "crm") -> httpx.Response:
        return httpx.get(f"{self.api}/changes/{change_id}", headers=self.headers(app, AUDIT), timeout=30)

    def wait(self, change_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            resp = self.status(change_id)
            body: dict[str, Any] = resp.json()
            if resp.status_code == 200:
                assert body["status"] in TERMINAL
                return body
            assert resp.status_code == 202, resp.text
            assert resp.headers["Retry-After"] and resp.headers["Location"].endswith(change_id)
            if time.monotonic() > deadline:
                raise TimeoutError(f"change {change_id} still {body['status']}")
            time.sleep(0.05)

    def wait_for_status(self, change_id: str, status: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the change until its status is ``status`` (terminal or not); its status body."""
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.status(change_id).json()
            if body["status"] == status:
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.05)

    def redeliver(self, change_id: str, times: int) -> None:
        """The change's message sent ``times`` more, with new MessageIds: as redeliveries after the duplicate-detection
        window of Service Bus."""
        message = {"changeId": change_id, "target": "local-ehr", "kind": "change"}
        for i in range(times):
            resp = httpx.post(
                f"{self.base}/runtime/servicebus/{CHANGE_QUEUE}/messages",
                json={
                    "body": json.dumps(message),
                    "messageId": f"{change_id}-again-{i}",
                    "contentType": "application/json",
                },
                timeout=10,
            )
            assert resp.status_code == 201, resp.text

    def wait_queue_drained(self, timeout: float = 10.0) -> None:
        """Wait until the change queue holds no active message, and a little more for the last delivery's call."""
        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.base}/runtime/servicebus/{CHANGE_QUEUE}", timeout=10).json()["active"] > 0:
            assert time.monotonic() < deadline, "the queue did not drain"
            time.sleep(0.05)
        time.sleep(0.3)  # the last delivery's dispatcher call finishes after the message left the queue

    def lineage(self, change_id: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.api}/changes/{change_id}/lineage", headers=self.headers("crm", AUDIT), timeout=30)
        assert resp.status_code == 200, resp.text
        events: list[dict[str, Any]] = resp.json()["events"]
        return events

    def fhir(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.fhir_base}/{path}", headers={"Authorization": f"Bearer {self.fhir_token}"}, timeout=10)

    def fhir_put(self, resource: dict[str, Any]) -> httpx.Response:
        return httpx.put(
            f"{self.fhir_base}/{resource['resourceType']}/{resource['id']}",
            json=resource,
            headers={"Authorization": f"Bearer {self.fhir_token}", "Content-Type": "application/fhir+json"},
            timeout=10,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def put_patient(gw: Gateway, resource_id: str, **extra: Any) -> dict[str, Any]:
    """A Patient (Pat Tester, female, born 1980, a home phone) written straight to the target, as the target stored
    it; ``extra`` adds or replaces elements."""
    resource = {
        "resourceType": "Patient",
        "id": resource_id,
        "name": [{"family": "Tester", "given": ["Pat"]}],
        "gender": "female",
        "birthDate": "1980-01-01",
        "telecom": [{"system": "phone", "value": "555-0000", "use": "home"}],
        **extra,
    }
    resp = gw.fhir_put(resource)
    assert resp.status_code in (200, 201), resp.text
    stored: dict[str, Any] = resp.json()
    return stored


def heart_rate(patient: dict[str, Any], value: int = 72, **extra: Any) -> dict[str, Any]:
    """A heart-rate Observation (a vital sign) of ``patient``; ``extra`` adds elements."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient['id']}"},
        "effectiveDateTime": "2026-11-25T10:00:00Z",
        "valueQuantity": {
            "value": value,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
        **extra,
    }


def start_gateway(
    azurite: Any, token_endpoint: Any, fhir_server: Any, fhir_token: str, state: Path, **settings: str
) -> Gateway:
    """Run the gateway in the local runtime as a separate process; ``settings`` are extra app settings."""
    port = free_port()
    env = {
        **os.environ,
        **gateway_environment(
            {
                "storageConnectionString": azurite.connection_string,
                "identityEndpoint": token_endpoint.url,
                "identityHeader": token_endpoint.identity_header,
                "fhir": {"local-ehr": fhir_server.base_url},
            }
        ),
        "WRITEBACK_TABLE_PREFIX": "e2e" + uuid.uuid4().hex[:8],
        "WRITEBACK_SWEEP_AFTER_SECONDS": "5",
        "PYTHONPATH": str(REPO_ROOT),
        **settings,
    }
    env.pop("IDENTITY_SERVER_THUMBPRINT", None)
    log_path = state / "gateway.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devhost",
            "--app-dir",
            str(REPO_ROOT),
            "--port",
            str(port),
            "--state-dir",
            str(state),
            "--log-level",
            "INFO",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gw = Gateway(f"http://127.0.0.1:{port}", log_path, fhir_server.base_url, fhir_token, proc)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, gw.log_text()
        try:
            if httpx.get(f"{gw.api}/health", timeout=2).status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, gw.log_text()
        time.sleep(0.1)


def stop_gateway(gw: Gateway) -> None:
    gw.proc.terminate()
    try:
        gw.proc.wait(15)
    except subprocess.TimeoutExpired:
        gw.proc.kill()


@pytest.fixture(scope="session")
def gateway(
    azurite: Any, token_endpoint: Any, fhir_server: Any, fhir_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = start_gateway(azurite, token_endpoint, fhir_server, fhir_token, tmp_path_factory.mktemp("gateway"))
    yield gw
    stop_gateway(gw)


@pytest.fixture
def patient(gateway: Gateway) -> dict[str, Any]:
    """A fresh Patient at the target (a new id per test), as the target stored it."""
    return put_patient(gateway, f"p-{uuid.uuid4().hex[:12]}")
