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
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devhost.host import LocalRuntime
from shared import bootstrap
from shared.api.caller_identity import encode_easyauth_principal
from shared.core.telemetry import CHANGE_ID_ATTRIBUTE
from tests.e2e.conftest import use_local_services_here
from tools.services.process import REPO_ROOT

pytestmark = pytest.mark.e2e


def test_one_change_is_one_connected_trace_without_phi(
    exporter: InMemorySpanExporter,
    azurite: Any,
    token_endpoint: Any,
    fhir_server: Any,
    fhir_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = use_local_services_here(monkeypatch, azurite, token_endpoint, fhir_server, "tel")
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
