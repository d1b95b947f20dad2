"""Canary values through the local runtime (in this process, so that its spans and logs can be read): a change that
carries a canary phone number, family name and reason, approved with a canary comment, written to the local FHIR
server, then purged by the maintenance timer once its retention has passed.

After the purge its status shows paths and no values, and retry and resolve answer 409 payload-purged. Throughout,
the canaries never reach a log record, a span, or anything the runtime persisted in its state folder: the Durable
history (the orchestration passes ids only), its work items and inbox, the local Service Bus queue, the timers.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.functions.timer import TimerRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devhost.host import LocalRuntime
from devhost.invoke import invoke
from shared import bootstrap
from shared.api.caller_identity import encode_easyauth_principal
from shared.app.journal import utcnow
from shared.config import get_settings
from shared.core.telemetry import CHANGE_ID_ATTRIBUTE
from tests.e2e.conftest import use_local_services_here
from tools.services.process import REPO_ROOT

pytestmark = pytest.mark.e2e
PHONE = "555-CANARY-1234"
FAMILY = "CANARYFAMILY"
REASON = "CANARY-REASON"
COMMENT = "CANARY-COMMENT"
CANARIES = (PHONE, FAMILY, REASON, COMMENT)


def principal(app: str, role: str, user: str) -> dict[str, str]:
    return {
        "X-MS-CLIENT-PRINCIPAL": encode_easyauth_principal(app, [role], user_id=user),
        "Content-Type": "application/json",
    }


REQUESTER = principal("crm", "Writeback.Submit", "u-1")
APPROVER = principal("portal", "Writeback.Approve", "rev-1")
OPERATOR = principal("ops", "Writeback.Operate", "op-1")


def canaries_in(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


def wait_for(url: str, status: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = httpx.get(url, headers=headers, timeout=30).json()
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def durable_rows(state: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the runtime's Durable store."""
    with sqlite3.connect(f"file:{state / 'durable.db'}?mode=ro", uri=True) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: db.execute(f"SELECT * FROM {table}").fetchall() for table in tables}  # noqa: S608


def test_canaries_never_reach_logs_spans_or_durable_history_and_are_purged_from_the_change(
    exporter: InMemorySpanExporter,
    azurite: Any,
    token_endpoint: Any,
    fhir_server: Any,
    fhir_token: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = use_local_services_here(monkeypatch, azurite, token_endpoint, fhir_server, "ret")
    patient_id = f"ret-{uuid.uuid4().hex[:8]}"
    patient = {"resourceType": "Patient", "id": patient_id, "name": [{"family": "T"}], "telecom": [{"value": "1"}]}
    put = httpx.put(
        f"{fhir_server.base_url}/Patient/{patient_id}",
        json=patient,
        headers={"Authorization": f"Bearer {fhir_token}", "Content-Type": "application/fhir+json"},
    )
    assert put.status_code == 201
    state = tmp_path / "runtime"
    runtime = LocalRuntime(app_dir=REPO_ROOT, state_dir=state, port=port)
    runtime.start()
    try:
        api = f"{runtime.base_url}/api/v1"
        body = {
            "target": "local-ehr",
            "operation": "patch",
            "resourceRef": f"Patient/{patient_id}",
            "patch": [
                {"op": "replace", "path": "/telecom/0/value", "value": PHONE},
                {"op": "replace", "path": "/name/0/family", "value": FAMILY},
            ],
            "reason": f"called in: {REASON}",
        }
        submitted = httpx.post(
            f"{api}/changes", json=body, headers={**REQUESTER, "Idempotency-Key": str(uuid.uuid4())}, timeout=30
        )
        assert submitted.status_code == 202, submitted.text
        change_id = submitted.json()["changeId"]
        status_url = f"{api}/changes/{change_id}"
        wait_for(status_url, "awaiting_approval", REQUESTER)
        decided = httpx.post(
            f"{status_url}/approval", json={"decision": "approve", "comment": COMMENT}, headers=APPROVER, timeout=30
        )
        assert decided.status_code == 202, decided.text
        ended = wait_for(status_url, "completed", REQUESTER)
        assert canaries_in(json.dumps(ended)) == list(CANARIES)  # the status showed them until now
        written = httpx.get(
            f"{fhir_server.base_url}/Patient/{patient_id}", headers={"Authorization": f"Bearer {fhir_token}"}
        ).json()
        assert written["telecom"][0]["value"] == PHONE  # the values went where they belong

        # The retention has passed: the runtime's own timer function runs, with the clock 30 days and 2 hours on.
        later = utcnow() + timedelta(days=30, hours=2)
        monkeypatch.setattr(bootstrap, "_gateway", bootstrap.build(get_settings(), clock=lambda: later))
        assert runtime.index is not None
        invoke(runtime.index.functions["purge_old_payloads"], TimerRequest(past_due=False))

        purged = httpx.get(status_url, headers=REQUESTER, timeout=30)
        assert purged.status_code == 200 and purged.json()["payloadPurged"] is True
        assert not canaries_in(purged.text)
        assert [op["path"] for op in purged.json()["plan"]["diff"]] == ["/name/0/family", "/telecom/0/value"]
        lineage = httpx.get(f"{status_url}/lineage", headers=REQUESTER, timeout=30).json()["events"]
        assert lineage[-1]["event"] == "payload-purged" and not canaries_in(json.dumps(lineage))
        for path, headers, payload in (
            ("retry", OPERATOR, b""),
            ("resolve", APPROVER, b'{"action": "replan"}'),
        ):
            refused = httpx.post(f"{status_url}/{path}", content=payload, headers=headers, timeout=30)
            assert refused.status_code == 409, refused.text
            assert refused.headers["Content-Type"].startswith("application/problem+json")
            assert refused.json()["type"] == "urn:writeback:problem:payload-purged"
    finally:
        runtime.stop()
        bootstrap.reset()

    # Logs: every record this process logged (the runtime, the app, the SDKs), at every level.
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert change_id in logged and "purged the payloads of 1 changes" in logged
    assert not canaries_in(logged)
    # Spans: the change's whole trace, as an exporter receives it.
    spans = [s for s in exporter.get_finished_spans() if s.attributes]
    assert any((s.attributes or {}).get(CHANGE_ID_ATTRIBUTE) == change_id for s in spans)
    exported = json.dumps(
        [{"name": s.name, "attributes": dict(s.attributes or {}), "events": [e.name for e in s.events]} for s in spans],
        default=str,
    )
    assert not canaries_in(exported)
    # Durable history: the change's orchestration ran there (input, history, output), with ids only.
    rows = durable_rows(state)
    history = [row for row in rows["history"] if row[0] == change_id]
    assert len(history) > 5 and any(row[0] == change_id for row in rows["instances"])
    assert not canaries_in(json.dumps(rows, default=str))
    # And not a byte of any file the runtime persisted (the SQLite files with their journals and free pages).
    for file in (f for f in state.rglob("*") if f.is_file()):
        content = file.read_bytes()
        assert not [c for c in CANARIES if c.encode() in content], file
