"""The payload purge timer against Azurite, called as the host calls it: a change that carried canary values (a
phone number, a family name, a reason, an approver's comment), ended, and whose retention has passed, keeps none of
them in any Table row of its partition (record and lineage), in the payload container, or in its status; its lineage
stays, with one ``payload-purged`` event more."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared import bootstrap
from shared.api.caller_identity import encode_easyauth_principal
from shared.app.approvals import Approver
from shared.bootstrap import Gateway
from shared.config import Settings
from shared.core.models import Principal
from shared.fakes.fhir import FakeFhirClient
from shared.fakes.messages import FakeMessagePublisher
from tests.support import ManualClock

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PHONE = "555-CANARY-1234"
FAMILY = "CANARYFAMILY"
REASON = "CANARY-REASON"
COMMENT = "CANARY-COMMENT"
CANARIES = (PHONE, FAMILY, REASON, COMMENT)
AUDITOR = {"X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("audit", ["Writeback.Audit"], user_id="a1")}
OPERATOR = {
    "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal("ops", ["Writeback.Operate"], user_id="op1"),
    "Content-Type": "application/json",
}


@pytest.fixture
def app_functions() -> dict[str, func.FunctionBuilder]:
    import function_app

    function_app.app.functions_bindings = None
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


def canaries_in(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


class Storage:
    """What Azurite holds for one change: every row of its partition, and every blob of the payload container."""

    def __init__(self, connection_string: str, prefix: str, container: str) -> None:
        self.changes = TableServiceClient.from_connection_string(connection_string).get_table_client(f"{prefix}changes")
        self.sweep = TableServiceClient.from_connection_string(connection_string).get_table_client(f"{prefix}sweep")
        self.container = BlobServiceClient.from_connection_string(connection_string).get_container_client(container)

    def rows(self, change_id: str) -> list[dict[str, Any]]:
        return [dict(e) for e in self.changes.query_entities(f"PartitionKey eq '{change_id}'")]

    def blobs(self) -> dict[str, str]:
        return {b.name: self.container.download_blob(b.name).readall().decode() for b in self.container.list_blobs()}


@pytest.mark.parametrize("inline_max_bytes", ["30000", "0"], ids=["inline", "blob"])
def test_the_timer_purges_every_canary_of_an_ended_change_from_azurite(
    azurite: Any, app_functions: dict[str, func.FunctionBuilder], monkeypatch: pytest.MonkeyPatch, inline_max_bytes: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    container = f"payloads-{uuid.uuid4().hex[:12]}"
    settings = Settings(
        storage_connection_string=azurite.connection_string,
        table_prefix=prefix,
        payload_container=container,
        inline_payload_max_bytes=int(inline_max_bytes),
        targets_file=REPO / "config" / "targets.yaml",
        policy_file=REPO / "config" / "policy.yaml",
    )
    clock = ManualClock(datetime.now(UTC))
    fhir = FakeFhirClient()
    fhir.update({"resourceType": "Patient", "id": "p1", "name": [{"family": "T"}], "telecom": [{"value": "1"}]})
    gateway: Gateway = bootstrap.build(
        settings, clock=clock, fhir=lambda target: fhir, publisher=FakeMessagePublisher()
    )
    storage = Storage(azurite.connection_string, prefix, container)

    body = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [
            {"op": "replace", "path": "/telecom/0/value", "value": PHONE},
            {"op": "replace", "path": "/name/0/family", "value": FAMILY},
        ],
        "reason": f"called in: {REASON}",
    }
    requester = Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"])
    change_id = gateway.intake.submit(requester, "k1", json.dumps(body).encode()).change.change_id
    assert gateway.pipeline.prepare(change_id)["status"] == "awaiting_approval"
    reviewer = Approver.of(Principal(app_id="portal", user_id="rev1", roles=["Writeback.Approve"]))
    gateway.approvals.decide(change_id, "approve", reviewer, f"checked: {COMMENT}")
    assert gateway.pipeline.write(change_id)["status"] == "completed"
    stored_before = json.dumps(storage.rows(change_id), default=str) + json.dumps(storage.blobs())
    assert canaries_in(stored_before) == list(CANARIES)  # they are there to be found
    lineage_before = [row for row in storage.rows(change_id) if row["RowKey"] != "record"]

    clock.now += timedelta(days=30, hours=2)
    monkeypatch.setattr(bootstrap, "_gateway", gateway)  # the timer's gateway: these settings, this clock
    try:
        app_functions["purge_old_payloads"].get_user_function()(None)
    finally:
        bootstrap.reset()

    rows = storage.rows(change_id)
    assert not canaries_in(json.dumps(rows, default=str))
    assert storage.blobs() == {}
    assert not canaries_in(json.dumps([dict(e) for e in storage.sweep.list_entities()], default=str))
    events = [row for row in rows if row["RowKey"] != "record"]
    assert [e["RowKey"] for e in events[:-1]] == [e["RowKey"] for e in lineage_before]
    assert [e["Data0"] for e in events[:-1]] == [e["Data0"] for e in lineage_before]  # the lineage as it was
    assert events[-1]["Event"] == "payload-purged"
    status = gateway.changes_api.get_change(AUDITOR, change_id, "http://gw")
    assert status.status == 200 and status.body["payloadPurged"] is True
    assert not canaries_in(json.dumps(status.body))
    assert [op["path"] for op in status.body["plan"]["diff"]] == ["/name/0/family", "/telecom/0/value"]
    retry = gateway.operations_api.retry(OPERATOR, change_id, b"", "http://gw")
    assert retry.status == 409 and retry.body["type"] == "urn:writeback:problem:payload-purged"
