"""Per-change costs on the happy path (DESIGN.md §11): Table round trips, downstream calls, activities.

The steps run in-process in the order the orchestration runs them; storage ports are counted at the port (one call
is one round trip to Table Storage), downstream calls by the real local FHIR server's own request counter.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import reset_token_providers, token_provider_for
from shared.api.caller_identity import ROLE_SUBMIT
from shared.app.dispatch import parse_message
from shared.bootstrap import build
from shared.config import Settings
from shared.core.models import ChangeStatus, Principal
from shared.core.targets import TargetRegistry
from shared.fakes.counting import CountingProxy
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_happy_path_update_costs(
    fhir: Any, fhir_token: str, token_endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", token_endpoint.identity_header)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    reset_token_providers()
    patient = {
        "resourceType": "Patient",
        "id": f"cost-{uuid.uuid4().hex[:8]}",
        "telecom": [{"system": "phone", "value": "1"}],
    }
    put = httpx.put(
        f"{fhir.base_url}/Patient/{patient['id']}",
        json=patient,
        headers={"Authorization": f"Bearer {fhir_token}", "Content-Type": "application/fhir+json"},
    )
    assert put.status_code == 201

    calls: Counter[str] = Counter()
    targets = TargetRegistry.from_file(
        REPO / "config" / "targets.yaml", {"WRITEBACK_TARGET_LOCAL_EHR_BASE_URL": fhir.base_url}
    )
    target = targets.get("local-ehr")
    assert target is not None
    client = HttpFhirClient(target, tokens=token_provider_for(target, managed_identity_client_id=None))
    gateway = build(
        Settings(policy_file=REPO / "config" / "policy.yaml"),
        change_store=CountingProxy(FakeChangeStore(), calls, "changes"),
        idempotency_store=CountingProxy(FakeIdempotencyStore(), calls, "idempotency"),
        sweep_state=CountingProxy(FakeSweepState(), calls, "sweep"),
        payload_store=FakePayloadStore(),
        publisher=FakeMessagePublisher(),
        targets=targets,
        fhir=lambda _: client,
    )
    intake, pipeline = gateway.intake, gateway.pipeline
    body = {
        "target": "local-ehr",
        "operation": "update",
        "resource": {**patient, "telecom": [{"system": "phone", "value": "2"}]},
    }
    client.read("Patient", patient["id"])  # warm the token cache: token fetches are not per-change calls
    httpx.post(f"{fhir.control_url}/stats/reset")

    principal = Principal(app_id="crm", user_id="u1", roles=[ROLE_SUBMIT])
    accepted = intake.submit(principal, "cost-key", json.dumps(body).encode())
    change_id = accepted.change.change_id
    message = parse_message(json.dumps({"changeId": change_id, "target": "local-ehr"}).encode())
    assert message.change_id == change_id
    activities = [pipeline.prepare_and_write(change_id)]

    assert activities[-1]["status"] == ChangeStatus.COMPLETED.value
    downstream = httpx.get(f"{fhir.control_url}/stats").json()["requests"]
    table_round_trips = sum(calls.values())
    print(
        f"\nper change: {table_round_trips} Table round trips {dict(calls)}, {downstream} downstream calls, "
        f"{len(activities)} activities"
    )
    assert table_round_trips <= 6, calls
    assert downstream <= 3
    assert len(activities) <= 4
