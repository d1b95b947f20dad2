"""The gateway itself, run by the local runtime as separate processes against the real local services.

A gateway here is two runtime instances on one state folder by default (``python -m devhost --instances 2``), as the
app runs scaled out in Azure: an HTTP call, a message, an orchestrator episode and an activity of one change may each
land on either instance. ``instances=1`` runs one process, for the tests that restart "the" process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from devhost.endpoints import gateway_environment
from devhost.instances import live_instances
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
    proc: subprocess.Popen[bytes]  # the one instance, or the supervisor of several
    state: Path
    instances: int

    def live_instances(self) -> list[dict[str, Any]]:
        """The instances serving the gateway (``pid``, private ``url``, ``groups``), from the state's instances.json."""
        return live_instances(self.state)

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


def gateway_settings(
    azurite: Any, token_endpoint: Any, fhir_server: Any, table_prefix: str, settings: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a gateway process: ours, the local services', its tables, then ``settings``."""
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
        "WRITEBACK_TABLE_PREFIX": table_prefix,
        "WRITEBACK_SWEEP_AFTER_SECONDS": "5",
        # Leases of an instance that dies lapse after this (default 10 s): the suites' kills are then taken over sooner.
        "WRITEBACK_DEV_LEASE_SECONDS": "3",
        "PYTHONPATH": str(REPO_ROOT),
        **(settings or {}),
    }
    env.pop("IDENTITY_SERVER_THUMBPRINT", None)
    return env


def spawn_gateway(
    state: Path, port: int, env: dict[str, str], instances: int, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """``python -m devhost`` with ``instances`` instances on ``state``, serving ``port``; output to gateway.log."""
    argv = [sys.executable, "-m", "devhost", "--app-dir", str(REPO_ROOT), "--port", str(port)]
    argv += ["--state-dir", str(state), "--log-level", "INFO", "--instances", str(instances), *extra_args]
    with (state / "gateway.log").open("ab") as log:
        return subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(gw: Gateway, timeout: float = 90.0) -> None:
    """Until the API answers healthy and every instance has listed itself; fails with the log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        assert gw.proc.poll() is None, gw.log_text()[-6000:]
        try:
            healthy = httpx.get(f"{gw.api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy and len(gw.live_instances()) == gw.instances:
            return
        assert time.monotonic() < deadline, gw.log_text()[-6000:]
        time.sleep(0.1)


def start_gateway(
    azurite: Any,
    token_endpoint: Any,
    fhir_server: Any,
    fhir_token: str,
    state: Path,
    *,
    instances: int = 2,
    **settings: str,
) -> Gateway:
    """Run the gateway in the local runtime, ``instances`` processes on one state; ``settings`` are extra app
    settings."""
    port = free_port()
    env = gateway_settings(azurite, token_endpoint, fhir_server, "e2e" + uuid.uuid4().hex[:8], settings)
    proc = spawn_gateway(state, port, env, instances)
    base = f"http://127.0.0.1:{port}"
    gw = Gateway(base, state / "gateway.log", fhir_server.base_url, fhir_token, proc, state=state, instances=instances)
    wait_ready(gw)
    return gw


def serve_gateway(
    request: pytest.FixtureRequest, name: str, *, instances: int = 2, **settings: str
) -> Iterator[Gateway]:
    """For a fixture (``yield from``): a gateway on the session's services with extra app settings, in a state
    folder of its own, stopped afterwards."""
    gw = start_gateway(
        request.getfixturevalue("azurite"),
        request.getfixturevalue("token_endpoint"),
        request.getfixturevalue("fhir_server"),
        request.getfixturevalue("fhir_token"),
        request.getfixturevalue("tmp_path_factory").mktemp(name),
        instances=instances,
        **settings,
    )
    try:
        yield gw
    finally:
        stop_gateway(gw)


def stop_gateway(gw: Gateway) -> None:
    """SIGTERM (the supervisor stops its instances), then SIGKILL to the whole process group if it hangs."""
    gw.proc.terminate()
    try:
        gw.proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait()


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


# --- the gateway in this process (to read its spans and logs) ---------------------------------------------------


@pytest.fixture
def exporter() -> Any:
    """Finished spans of this process, taken after the app's redacting processor, as any exporter takes them."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.bootstrap import configure_telemetry

    provider = configure_telemetry().tracer_provider
    assert trace.get_tracer_provider() is provider
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def use_local_services_here(
    monkeypatch: pytest.MonkeyPatch, azurite: Any, token_endpoint: Any, fhir_server: Any, prefix: str
) -> int:
    """Point this process's gateway at the local services (fresh tables under ``prefix``); the port its runtime
    should serve, which the app reaches its local queue through."""
    from shared import bootstrap
    from shared.adapters.identity import reset_token_providers

    port = free_port()
    env = gateway_environment(
        {
            "storageConnectionString": azurite.connection_string,
            "identityEndpoint": token_endpoint.url,
            "identityHeader": token_endpoint.identity_header,
            "fhir": {"local-ehr": fhir_server.base_url},
        }
    )
    env["WRITEBACK_TABLE_PREFIX"] = prefix + uuid.uuid4().hex[:8]
    env["WRITEBACK_LOCAL_RUNTIME_URL"] = f"http://127.0.0.1:{port}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    bootstrap.reset()
    reset_token_providers()
    return port
