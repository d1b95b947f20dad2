"""Telemetry end to end: one change through the local runtime (in this process) is one connected trace — HTTP
intake, Service Bus dispatch, orchestration activities, FHIR calls — with the change id on every span, and no PHI."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devhost.endpoints import gateway_environment
from devhost.host import LocalRuntime
from shared import bootstrap
from shared.adapters.identity import reset_token_providers
from shared.api.caller_identity import encode_easyauth_principal
from shared.bootstrap import configure_telemetry
from shared.core.telemetry import CHANGE_ID_ATTRIBUTE
from tools.services.process import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    provider = configure_telemetry().tracer_provider
    assert trace.get_tracer_provider() is provider
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))  # after the redacting processor, like any exporter
    return memory


def test_one_change_is_one_connected_trace_without_phi(
    exporter: InMemorySpanExporter,
    azurite: Any,
    token_endpoint: Any,
    fhir_server: Any,
    fhir_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    env = gateway_environment(
        {
            "storageConnectionString": azurite.connection_string,
            "identityEndpoint": token_endpoint.url,
            "identityHeader": token_endpoint.identity_header,
            "fhir": {"local-ehr": fhir_server.base_url},
        }
    )
    for key, value in {
        **env,
        "WRITEBACK_TABLE_PREFIX": "tel" + uuid.uuid4().hex[:8],
        "WRITEBACK_LOCAL_RUNTIME_URL": f"http://127.0.0.1:{port}",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    bootstrap.reset()
    reset_token_providers()
    canary = f"CANARY-{uuid.uuid4().hex}"
    patient_id = f"tel-{uuid.uuid4().hex[:8]}"
    put = httpx.put(
        f"{fhir_server.base_url}/Patient/{patient_id}",
        json={"resourceType": "Patient", "id": patient_id, "telecom": [{"system": "phone", "value": "1"}]},
        headers={"Authorization": f"Bearer {fhir_token}", "Content-Type": "application/fhir+json"},
    )
    assert put.status_code == 201
    runtime = LocalRuntime(app_dir=REPO_ROOT, state_dir=tmp_path / "runtime", port=port)
    runtime.start()
    try:
        caller_trace = uuid.uuid4().hex
        headers = {
            "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("crm", ["Writeback.Submit"], user_id="u-1"),
            "Idempotency-Key": str(uuid.uuid4()),
            # the local runtime has no host span: the intake continues the caller's trace
            "traceparent": f"00-{caller_trace}-{uuid.uuid4().hex[:16]}-01",
        }
        body = {
            "target": "local-ehr",
            "operation": "patch",
            "resourceRef": f"Patient/{patient_id}",
            "patch": [{"op": "replace", "path": "/telecom/0/value", "value": canary}],
            "reason": f"because {canary}",
        }
        resp = httpx.post(f"{runtime.base_url}/api/v1/changes", json=body, headers=headers, timeout=30)
        assert resp.status_code == 202, resp.text
        change_id = resp.json()["changeId"]
        deadline = time.monotonic() + 30
        while httpx.get(f"{runtime.base_url}/api/v1/changes/{change_id}", headers=headers).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        runtime.stop()
        bootstrap.reset()
    spans = [s for s in exporter.get_finished_spans() if s.attributes]
    mine = [s for s in spans if (s.attributes or {}).get(CHANGE_ID_ATTRIBUTE) == change_id]
    names = {s.name for s in mine}
    # an allowed change is planned and written by one step, so its FHIR calls are under writeback.prepare
    assert {"writeback.intake", "writeback.dispatch", "writeback.prepare"} <= names, names
    assert any(n.startswith("FHIR GET Patient") for n in names) and any(n.startswith("FHIR POST") for n in names)
    # one connected trace across HTTP, queue, orchestration: the caller's
    assert {s.context.trace_id for s in mine} == {int(caller_trace, 16)}
    exported = json.dumps([{"name": s.name, "attributes": dict(s.attributes or {})} for s in spans], default=str)
    assert canary not in exported
