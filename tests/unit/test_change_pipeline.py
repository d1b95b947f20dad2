"""The pipeline's steps (prepare, write, expire, fail) over the fakes of our ports, through the real intake path.

Each test submits a change the way a caller does (``IntakeService`` → an ``accepted`` record with its payload
stored), runs the steps the orchestrator's activities run, and checks what a user or operator sees: the record's
wire form (status, plan, approval, result, error), its lineage, and the versions the fake FHIR server holds. It
proves every branch of ``prepare`` (allow, approve with deadline / reminder / notify, deny, dry run, no change,
not found, a base version that conflicts or merges, a failing or refusing target) and of ``write`` (written and
verified, 412 merged or in conflict, retryable and permanent errors, drift, repeated runs), plus ``expire`` and
``fail``. A step never decides to do nothing on a record cached in its process (another instance may have moved
the change): the "another process" tests failed while it did.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.adapters.fhir_http import error_for
from shared.app.approval_links import ApprovalLinkSigner
from shared.app.approvals import ApprovalService, Approver, round_of
from shared.app.dispatch import parse_message
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.app.operations import OperationsService
from shared.app.pipeline import ChangePipeline, StepFailedError
from shared.core.errors import PermanentError, RetryableError
from shared.core.models import ChangeMessage, LineageEvent, Principal
from shared.core.policy import Policy
from shared.core.record_parts import PayloadRef
from shared.core.targets import TargetConfig, TargetRegistry
from shared.fakes.counting import CountingProxy
from shared.fakes.fhir import FakeFhirClient
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState

REPO = Path(__file__).resolve().parents[2]
TARGETS = TargetRegistry.from_file(REPO / "config" / "targets.yaml", {})
POLICY = Policy.from_file(REPO / "config" / "policy.yaml")
CRM = Principal(app_id="crm", user_id="u1", roles=["Writeback.Submit"])
START = datetime(2026, 11, 25, 12, tzinfo=UTC)
CHANGE_TAG = "urn:writeback:change"

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Doe", "given": ["Jane"]}],
    "gender": "female",
    "birthDate": "1980-01-01",
    "telecom": [{"system": "phone", "value": "555-0000", "use": "home"}],
}
# what the intake's events and a completed write add to the steps' own events
INTAKE_EVENTS = ["accepted"]
PLANNED_EVENTS = ["validating", "planned", "decided"]
WRITTEN_EVENTS = ["written", "verified", "provenance", "completed"]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class DriftingFhirServer(FakeFhirClient):
    """A target that normalises phone numbers as it stores them (drops ``-``): it keeps something else than sent."""

    def _store(self, interaction: str, resource: dict[str, Any]) -> dict[str, Any]:
        if resource.get("resourceType") == "Patient":
            resource = json.loads(json.dumps(resource))
            for telecom in resource.get("telecom", []):
                telecom["value"] = telecom["value"].replace("-", "")
        return super()._store(interaction, resource)


@dataclass
class Gateway:
    """The use cases wired over fakes, as one process of the Function App would have them."""

    clock: Clock
    store: FakeChangeStore
    payloads: FakePayloadStore
    fhir: FakeFhirClient
    journal: ChangeJournal
    intake: IntakeService
    pipeline: ChangePipeline
    seed_version: str

    def submit(self, body: dict[str, Any], *, key: str = "k1", principal: Principal = CRM) -> str:
        return self.intake.submit(principal, key, json.dumps(body).encode()).change.change_id

    def wire(self, change_id: str) -> dict[str, Any]:
        record = self.store.get(change_id)
        assert record is not None
        return record.to_wire()

    def lineage(self, change_id: str) -> list[LineageEvent]:
        return self.store.lineage(change_id)

    def events(self, change_id: str) -> list[str]:
        return [e.event for e in self.lineage(change_id)]

    def last_event(self, change_id: str) -> LineageEvent:
        return self.lineage(change_id)[-1]

    def patient(self) -> dict[str, Any]:
        return self.fhir.read("Patient", "p1").resource or {}

    def history(self) -> list[dict[str, Any]]:
        return self.fhir.history("Patient", "p1")

    def downstream_update(self, **changes: Any) -> str:
        """Another writer changes the patient at the target (no If-Match); returns the new version."""
        current = self.patient()
        written = self.fhir.update({**current, **changes})
        assert written.version_id is not None
        return written.version_id

    def another_process(self) -> ChangePipeline:
        """The same pipeline in another worker process: same stores and target, its own journal cache."""
        return pipeline_over(ChangeJournal(self.store, clock=self.clock), self.payloads, self.fhir, self.clock)


def pipeline_over(
    journal: ChangeJournal,
    payloads: FakePayloadStore,
    fhir: FakeFhirClient,
    clock: Clock,
    *,
    targets: TargetRegistry = TARGETS,
    policy: Policy = POLICY,
    approval_reminder: timedelta | None = None,
    notify: bool = False,
) -> ChangePipeline:
    def client_for(target: TargetConfig) -> FakeFhirClient:
        assert target.id == "local-ehr"
        return fhir

    return ChangePipeline(
        journal=journal,
        payloads=payloads,
        targets=targets,
        policy=policy,
        fhir=client_for,
        approval_timeout=timedelta(hours=72),
        approval_reminder=approval_reminder,
        notify_approvers=notify,
        clock=clock,
    )


def make_gateway(
    *,
    fhir: FakeFhirClient | None = None,
    targets: TargetRegistry = TARGETS,
    policy: Policy = POLICY,
    approval_reminder: timedelta | None = None,
    notify: bool = False,
    payloads: FakePayloadStore | None = None,
) -> Gateway:
    clock = Clock()
    store, payloads = FakeChangeStore(), payloads or FakePayloadStore()
    server = fhir or FakeFhirClient(clock=clock)
    seeded = server.update(PATIENT)
    assert seeded.version_id is not None
    journal = ChangeJournal(store, clock=clock)
    intake = IntakeService(
        idempotency=FakeIdempotencyStore(),
        journal=journal,
        payloads=payloads,
        publisher=FakeMessagePublisher(clock=clock),
        targets=TARGETS,
        max_body_bytes=100_000,
        retention=timedelta(hours=72),
        sweep_state=FakeSweepState(),
        sweep_grace=timedelta(minutes=15),
        clock=clock,
    )
    pipeline = pipeline_over(
        journal,
        payloads,
        server,
        clock,
        targets=targets,
        policy=policy,
        approval_reminder=approval_reminder,
        notify=notify,
    )
    return Gateway(clock, store, payloads, server, journal, intake, pipeline, seeded.version_id)


@pytest.fixture
def gw() -> Gateway:
    return make_gateway()


def patch_telecom(value: str = "555-0100", **extra: Any) -> dict[str, Any]:
    """A patch the ``crm`` source may make without approval (``Patient.telecom: allow``)."""
    return {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": "Patient/p1",
        "patch": [{"op": "replace", "path": "/telecom/0/value", "value": value}],
        "reason": "the patient called in",
        **extra,
    }


def update(**changes: Any) -> dict[str, Any]:
    return {"target": "local-ehr", "operation": "update", "resource": {**PATIENT, **changes}, "reason": "front desk"}


def http_error(status: int, *, retry_after: str | None = None, method: str = "POST", rtype: str = "Bundle") -> Any:
    """The error the real FHIR client raises for this answer (same mapping, Retry-After parsed)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return error_for(httpx.Response(status, headers=headers), method=method, resource_type=rtype)


def tagged_with(resource: dict[str, Any], change_id: str) -> bool:
    return any(t.get("system") == CHANGE_TAG and t.get("code") == change_id for t in resource["meta"].get("tag", []))


def writing(gw: Gateway, body: dict[str, Any] | None = None) -> str:
    """A change the policy allows, prepared: status ``writing``, nothing written yet."""
    change_id = gw.submit(body or patch_telecom())
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "writing"}
    return change_id


def awaiting(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """A change that needs an approval (``Patient.name: approve``), prepared; with what prepare answered."""
    change_id = gw.submit(update(name=[{"family": "Doe-Smith", "given": ["Jane"]}]))
    answer = gw.pipeline.prepare(change_id)
    assert answer["status"] == "awaiting_approval"
    return change_id, answer


# --- prepare: the policy's three answers ------------------------------------------------------------------


def test_an_allowed_change_is_planned_written_verified_and_completed(gw: Gateway) -> None:
    change_id = gw.submit(patch_telecom())
    assert gw.wire(change_id)["status"] == "accepted"

    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "writing"}
    prepared = gw.wire(change_id)
    assert prepared["status"] == "writing"
    plan = prepared["plan"]
    assert plan["decision"] == "allow"
    assert plan["changedPaths"] == ["Patient.telecom"]
    assert plan["currentVersion"] == gw.seed_version
    assert plan["baseVersion"] is None and plan["merged"] is False
    assert plan["diff"] == [{"op": "replace", "path": "/telecom/0/value", "value": "555-0100"}]
    assert plan["source"] == "crm" and plan["policyVersion"].startswith("2026-11-25")
    assert [r["path"] for r in plan["reasons"]] == ["Patient.telecom"]
    assert plan["proposed"]["kind"] == "inline"
    assert len(gw.history()) == 1, "prepare writes nothing"

    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "completed"}
    done = gw.wire(change_id)
    stored = gw.patient()
    assert done["status"] == "completed" and "error" not in done
    assert stored["telecom"][0]["value"] == "555-0100" and tagged_with(stored, change_id)
    assert [v["meta"]["versionId"] for v in gw.history()] == [gw.seed_version, stored["meta"]["versionId"]]
    result = done["result"]
    assert result["versionId"] == stored["meta"]["versionId"] != gw.seed_version
    assert result["verified"] is True and result["noChange"] is False
    assert result["resourceRef"] == "Patient/p1"
    provenances = gw.fhir.resources("Provenance")
    assert [f"Provenance/{p['id']}" for p in provenances] == [result["provenance"]]
    assert provenances[0]["target"] == [{"reference": "Patient/p1"}]

    assert gw.events(change_id) == [*INTAKE_EVENTS, *PLANNED_EVENTS, "writing", *WRITTEN_EVENTS]
    by_event = {e.event: e for e in gw.lineage(change_id)}
    assert by_event["written"].details["ifMatch"] == gw.seed_version
    assert by_event["written"].details["versionId"] == result["versionId"]
    assert by_event["verified"].details == {"verified": True, "driftPaths": []}
    assert by_event["completed"].status == "completed"
    assert "555-0100" not in json.dumps([e.to_wire() for e in gw.lineage(change_id)]), "no PHI in the lineage"


def test_a_change_needing_approval_waits_with_a_deadline_and_writes_nothing(gw: Gateway) -> None:
    change_id, answer = awaiting(gw)
    expires = (START + timedelta(hours=72)).isoformat()
    assert answer == {"changeId": change_id, "status": "awaiting_approval", "expiresAt": expires, "notify": False}
    record = gw.wire(change_id)
    awaited = gw.last_event(change_id)
    planned = next(e for e in gw.lineage(change_id) if e.event == "planned")
    assert record["approval"] == {
        "required": True,
        "expiresAt": expires,
        "paths": ["Patient.name"],
        "round": awaited.sequence,  # the round: tokens are bound to it
        "diffHash": planned.details["diffHash"],
    }
    assert record["plan"]["decision"] == "approve" and record["plan"]["changedPaths"] == ["Patient.name"]
    assert gw.events(change_id) == [*INTAKE_EVENTS, *PLANNED_EVENTS, "awaiting_approval"]
    assert gw.last_event(change_id).details == {"expiresAt": expires}
    assert len(gw.history()) == 1


@pytest.mark.parametrize(
    ("reminder", "notify", "remind_at"),
    [
        (timedelta(hours=24), True, START + timedelta(hours=24)),
        (timedelta(hours=24), False, START + timedelta(hours=24)),
        (timedelta(hours=72), True, None),  # not before the deadline: no reminder
        (None, True, None),
    ],
)
def test_approval_answer_carries_the_reminder_and_whether_to_notify(
    reminder: timedelta | None, notify: bool, remind_at: datetime | None
) -> None:
    gw = make_gateway(approval_reminder=reminder, notify=notify)
    change_id, answer = awaiting(gw)
    assert answer["notify"] is notify
    assert answer.get("remindAt") == (remind_at.isoformat() if remind_at else None)
    assert gw.wire(change_id)["approval"]["expiresAt"] == (START + timedelta(hours=72)).isoformat()


def test_an_approved_change_is_written_with_the_approver_named_in_its_provenance(gw: Gateway) -> None:
    change_id, _ = awaiting(gw)
    ApprovalService(gw.journal, clock=gw.clock).decide(change_id, "approve", Approver("boss", None, "api"), "ok")
    assert gw.wire(change_id)["status"] == "writing"

    assert gw.pipeline.write(change_id)["status"] == "completed"
    record = gw.wire(change_id)
    assert record["approval"]["decision"] == "approved" and record["approval"]["decidedBy"] == "boss"
    assert gw.patient()["name"] == [{"family": "Doe-Smith", "given": ["Jane"]}]
    (provenance,) = gw.fhir.resources("Provenance")
    verifiers = [a for a in provenance["agent"] if a["type"]["coding"][0]["code"] == "verifier"]
    assert [a["who"]["identifier"]["value"] for a in verifiers] == ["boss"]
    assert gw.events(change_id)[-6:] == ["approved", "writing", *WRITTEN_EVENTS]


def test_a_link_holder_who_gave_a_name_is_not_written_as_a_verified_approver(gw: Gateway) -> None:
    change_id, _ = awaiting(gw)
    record = gw.journal.load(change_id, fresh=True)
    signer = ApprovalLinkSigner({"k1": bytes(range(32))}, clock=gw.clock)
    token = signer.callback_tokens(change_id, START + timedelta(hours=72), round_of(record))["approve"]
    approvals = ApprovalService(gw.journal, clock=gw.clock)
    approvals.decide_by_link(signer.verify(token), Approver.link_holder("Dana Boss", None), "ok", lambda: None)

    assert gw.pipeline.write(change_id)["status"] == "completed"
    approval = gw.wire(change_id)["approval"]
    assert approval["decidedBy"] == "approval-link" and approval["claimedBy"] == "Dana Boss"
    (provenance,) = gw.fhir.resources("Provenance")
    assert not [a for a in provenance["agent"] if a["type"]["coding"][0]["code"] == "verifier"]
    assert "the name they gave, not verified: Dana Boss" in provenance["reason"][-1]["text"]
    assert next(e for e in gw.lineage(change_id) if e.event == "approved").actor == "approval-link"


def test_a_denied_change_is_rejected_with_a_problem_naming_the_path(gw: Gateway) -> None:
    change_id = gw.submit(update(gender="male", telecom=[{"system": "phone", "value": "555-0100"}]))
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "rejected"}
    record = gw.wire(change_id)
    assert record["status"] == "rejected"
    error = record["error"]
    assert error["type"] == "urn:writeback:problem:policy-denied" and error["status"] == 403
    assert [(i["path"], i["code"]) for i in error["issues"]] == [("Patient.gender", "denied")]
    assert record["plan"]["decision"] == "deny"
    assert {r["path"]: r["rule"] for r in record["plan"]["reasons"]} == {
        "Patient.gender": "deny",
        "Patient.telecom": "allow",
    }
    assert "proposed" not in record["plan"] and "result" not in record
    assert gw.events(change_id) == [*INTAKE_EVENTS, *PLANNED_EVENTS, "rejected"]
    assert gw.last_event(change_id).details == {"code": "policy-denied", "issues": ["Patient.gender"]}
    assert len(gw.history()) == 1


# --- prepare: the other ends ------------------------------------------------------------------------------


def test_a_dry_run_is_planned_and_decided_but_not_written(gw: Gateway) -> None:
    change_id = gw.submit(patch_telecom(dryRun=True))
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "planned"}
    record = gw.wire(change_id)
    assert record["plan"]["decision"] == "allow" and record["plan"]["changedPaths"] == ["Patient.telecom"]
    assert "proposed" not in record["plan"] and "result" not in record and "approval" not in record
    assert gw.events(change_id)[-4:] == [*PLANNED_EVENTS, "planned"]
    assert gw.last_event(change_id).details == {"dryRun": True}
    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "planned"}
    assert len(gw.history()) == 1


def test_a_dry_run_of_a_change_needing_approval_is_planned_without_asking_anyone(gw: Gateway) -> None:
    change_id = gw.submit({**update(name=[{"family": "Other"}]), "dryRun": True})
    assert gw.pipeline.prepare(change_id)["status"] == "planned"
    record = gw.wire(change_id)
    assert record["plan"]["decision"] == "approve" and "approval" not in record


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_change_that_changes_nothing_ends_without_a_write(gw: Gateway, dry_run: bool) -> None:
    change_id = gw.submit({**update(), "dryRun": dry_run})
    status = "planned" if dry_run else "completed"
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": status}
    record = gw.wire(change_id)
    assert record["result"] == {"versionId": gw.seed_version, "noChange": True, "verified": True}
    assert record["plan"]["changedPaths"] == [] and record["plan"]["diff"] == []
    assert gw.events(change_id) == [*INTAKE_EVENTS, *PLANNED_EVENTS, status]
    assert gw.last_event(change_id).details == {"noChange": True}
    assert len(gw.history()) == 1 and gw.fhir.resources("Provenance") == []


def test_a_resource_missing_at_the_target_is_rejected_as_not_found(gw: Gateway) -> None:
    change_id = gw.submit({**patch_telecom(), "resourceRef": "Patient/nobody"})
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "rejected"}
    error = gw.wire(change_id)["error"]
    assert error["status"] == 400 and error["type"] == "urn:writeback:problem:invalid-request"
    assert [(i["path"], i["code"]) for i in error["issues"]] == [("/resourceRef", "not-found")]
    assert "plan" not in gw.wire(change_id)
    assert gw.events(change_id) == [*INTAKE_EVENTS, "validating", "rejected"]
    assert gw.last_event(change_id).details == {"code": "invalid-request", "issues": ["/resourceRef"]}


def test_a_patch_that_does_not_apply_is_rejected_naming_the_operation(gw: Gateway) -> None:
    body = {**patch_telecom(), "patch": [{"op": "replace", "path": "/telecom/5/value", "value": "x"}]}
    change_id = gw.submit(body)
    assert gw.pipeline.prepare(change_id)["status"] == "rejected"
    error = gw.wire(change_id)["error"]
    assert error["type"] == "urn:writeback:problem:patch-not-applicable" and error["status"] == 422
    assert [i["path"] for i in error["issues"]] == ["patch/0"]


def test_a_base_version_overlapping_a_downstream_change_is_a_conflict(gw: Gateway) -> None:
    downstream = gw.downstream_update(telecom=[{"system": "phone", "value": "555-9999", "use": "home"}])
    change_id = gw.submit(patch_telecom(baseVersion=gw.seed_version))
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "conflict"}
    record = gw.wire(change_id)
    assert record["plan"] == {
        "conflict": {"ours": ["Patient.telecom"], "theirs": ["Patient.telecom"], "overlap": ["Patient.telecom"]}
    }
    assert record["error"]["type"] == "urn:writeback:problem:merge-conflict"
    assert [i["path"] for i in record["error"]["issues"]] == ["Patient.telecom"]
    assert gw.events(change_id) == [*INTAKE_EVENTS, "validating", "conflict"]
    assert gw.patient()["meta"]["versionId"] == downstream and len(gw.history()) == 2


def test_a_base_version_disjoint_from_a_downstream_change_is_merged_and_keeps_both(gw: Gateway) -> None:
    downstream = gw.downstream_update(gender="other")
    change_id = writing(gw, patch_telecom(baseVersion=gw.seed_version))
    plan = gw.wire(change_id)["plan"]
    assert plan["baseVersion"] == gw.seed_version and plan["currentVersion"] == downstream
    assert plan["merged"] is True and plan["downstreamPaths"] == ["Patient.gender"]
    assert plan["changedPaths"] == ["Patient.telecom"]

    assert gw.pipeline.write(change_id)["status"] == "completed"
    stored = gw.patient()
    assert stored["gender"] == "other" and stored["telecom"][0]["value"] == "555-0100"
    assert gw.history()[-2]["meta"]["versionId"] == downstream


def test_a_target_refusing_the_read_fails_the_change(gw: Gateway) -> None:
    change_id = gw.submit(patch_telecom())
    gw.fhir.fail_next(http_error(403, method="GET", rtype="Patient"), interactions=["read"])
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "failed"}
    error = gw.wire(change_id)["error"]
    assert (
        error["type"] == "urn:writeback:problem:downstream-auth"
        and error["detail"] == "GET Patient: HTTP 403 Forbidden"
    )
    assert gw.events(change_id)[-2:] == ["validating", "failed"]


def test_a_target_no_longer_configured_fails_the_change() -> None:
    gw = make_gateway(targets=TargetRegistry([]))
    change_id = gw.submit(patch_telecom())
    assert gw.pipeline.prepare(change_id)["status"] == "failed"
    assert gw.wire(change_id)["error"]["detail"] == "target 'local-ehr' is no longer configured"


def not_ready_targets(kind: str) -> TargetRegistry:
    """local-ehr without a base URL, or on its loopback URL while the app runs in Azure."""
    from shared.core.targets import TargetEntry

    if kind == "not-configured":
        return TargetRegistry([], unconfigured=[TargetEntry(id="local-ehr")])
    return TargetRegistry.from_file(REPO / "config" / "targets.yaml", {}, in_azure=True)


@pytest.mark.parametrize("kind", ["not-configured", "loopback-in-azure"])
def test_a_target_not_ready_fails_the_change_at_once_without_calling_it(kind: str) -> None:
    gw = make_gateway()
    change_id = gw.submit(patch_telecom())
    calls = len(gw.fhir.calls)
    result = pipeline_over(gw.journal, gw.payloads, gw.fhir, gw.clock, targets=not_ready_targets(kind)).prepare(
        change_id
    )
    assert result["status"] == "failed" and "retry" not in result
    error = gw.wire(change_id)["error"]
    assert error["type"] == "urn:writeback:problem:target-not-ready"
    assert error["issues"][0]["code"] == kind and "local-ehr" in error["detail"]
    assert gw.last_event(change_id).details == {"code": "target-not-ready", "issues": ["target"]}
    assert len(gw.fhir.calls) == calls


@pytest.mark.parametrize("kind", ["not-configured", "loopback-in-azure"])
def test_a_target_not_ready_by_the_write_fails_the_change_without_writing(kind: str) -> None:
    gw = make_gateway()
    change_id = gw.submit(patch_telecom())
    assert gw.pipeline.prepare(change_id)["status"] == "writing"
    versions = len(gw.history())
    later = pipeline_over(gw.journal, gw.payloads, gw.fhir, gw.clock, targets=not_ready_targets(kind))
    assert later.write(change_id)["status"] == "failed"
    assert gw.wire(change_id)["error"]["type"] == "urn:writeback:problem:target-not-ready"
    assert len(gw.history()) == versions


def test_a_target_without_if_match_refuses_an_update_before_anyone_is_asked_to_approve(tmp_path: Path) -> None:
    text = (REPO / "config" / "targets.yaml").read_text()
    (tmp_path / "targets.yaml").write_text(
        text.replace("    capabilities:\n", "    capabilities:\n      if_match: false\n", 1)
    )
    gw = make_gateway(targets=TargetRegistry.from_file(tmp_path / "targets.yaml", {}))
    change_id = gw.submit(update(name=[{"family": "Doe-Smith", "given": ["Jane"]}]))  # needs an approval
    assert gw.pipeline.prepare(change_id)["status"] == "failed"
    record = gw.wire(change_id)
    assert record["error"]["type"].endswith("if-match-unavailable") and "approval" not in record
    assert len(gw.history()) == 1


def test_a_step_that_chokes_on_a_value_raises_without_the_value(gw: Gateway) -> None:
    """An activity's exception goes into the Durable history and the host's logs: never a value of the change."""
    change_id = gw.submit(patch_telecom())
    record = gw.journal.load(change_id, fresh=True)
    canary = "555-CANARY-0199"
    body = {**patch_telecom(), "patch": [{"op": "replace", "path": canary, "value": canary}]}
    stored = gw.payloads.put(change_id, json.dumps(body).encode(), name="request")
    gw.journal.record(record, [], payload=stored)

    with pytest.raises(StepFailedError) as failed:
        gw.pipeline.prepare(change_id)
    text = str(failed.value) + repr(failed.value) + str(failed.value.detail)
    assert canary not in text and "ValidationError at /patch/0/path" in text
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


def test_prepare_again_answers_the_state_the_change_reached(gw: Gateway) -> None:
    change_id = writing(gw)
    before = gw.events(change_id)
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "writing"}
    assert gw.events(change_id) == before


# --- write: versions moved at the target ------------------------------------------------------------------


def test_a_412_after_a_disjoint_downstream_change_is_merged_on_conflict_then_completed(gw: Gateway) -> None:
    change_id = writing(gw)
    downstream = gw.downstream_update(gender="other")

    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "completed"}
    stored = gw.patient()
    assert stored["gender"] == "other", "the downstream change is kept"
    assert stored["telecom"][0]["value"] == "555-0100" and tagged_with(stored, change_id)
    assert [v["meta"]["versionId"] for v in gw.history()][:2] == [gw.seed_version, downstream]
    assert len(gw.history()) == 3
    assert gw.wire(change_id)["result"]["versionId"] == stored["meta"]["versionId"]
    assert gw.wire(change_id)["result"]["verified"] is True
    assert gw.events(change_id)[-6:] == ["writing", "merged-on-conflict", *WRITTEN_EVENTS]
    merged, written = (e for e in gw.lineage(change_id) if e.event in ("merged-on-conflict", "written"))
    assert merged.details == {"currentVersion": downstream, "downstreamPaths": ["Patient.gender"]}
    assert merged.status == "writing"
    assert written.details["ifMatch"] == downstream


def test_a_412_after_an_overlapping_downstream_change_is_a_conflict(gw: Gateway) -> None:
    change_id = writing(gw)
    downstream = gw.downstream_update(telecom=[{"system": "phone", "value": "555-9999"}])

    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "conflict"}
    record = gw.wire(change_id)
    assert record["plan"]["conflict"] == {
        "ours": ["Patient.telecom"],
        "theirs": ["Patient.telecom"],
        "overlap": ["Patient.telecom"],
    }
    assert record["plan"]["decision"] == "allow", "the plan is kept beside the conflict"
    assert record["error"]["type"] == "urn:writeback:problem:merge-conflict"
    assert "result" not in record
    assert gw.events(change_id)[-2:] == ["writing", "conflict"]
    assert gw.patient()["meta"]["versionId"] == downstream
    assert not any(tagged_with(v, change_id) for v in gw.history())
    assert gw.fhir.resources("Provenance") == []


def test_a_412_at_a_target_without_vread_is_a_conflict_for_a_human() -> None:
    local_ehr = TARGETS.get("local-ehr")
    assert local_ehr is not None
    no_vread = local_ehr.model_copy(update={"capabilities": local_ehr.capabilities.model_copy(update={"vread": False})})
    gw = make_gateway(targets=TargetRegistry([no_vread]))
    change_id = writing(gw)
    gw.downstream_update(gender="other")
    assert gw.pipeline.write(change_id)["status"] == "conflict"
    assert gw.wire(change_id)["error"]["type"] == "urn:writeback:problem:version-conflict"


def test_a_412_when_the_target_lost_the_planned_version_ends_in_conflict(gw: Gateway) -> None:
    change_id = writing(gw)
    gw.downstream_update(gender="other")
    gw.fhir.fail_next(http_error(404, method="GET", rtype="Patient"), interactions=["vread"])
    assert gw.pipeline.write(change_id)["status"] == "conflict"


# --- write: the target fails --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after"), [(429, 30), (503, 12)])
def test_a_throttled_or_unavailable_target_makes_the_write_wait_not_fail(
    gw: Gateway, status: int, retry_after: int
) -> None:
    change_id = writing(gw)
    gw.fhir.fail_next(http_error(status, retry_after=str(retry_after)), interactions=["transaction"])

    answer = gw.pipeline.write(change_id)
    assert answer["retry"] is True and answer["status"] == "writing"
    assert answer["code"] == "downstream-retryable" and answer["downstreamStatus"] == status
    assert answer["retryAfter"] >= retry_after
    assert gw.wire(change_id)["status"] == "writing" and "error" not in gw.wire(change_id)
    waited = gw.last_event(change_id)
    assert waited.event == "waiting-to-retry" and waited.status == "writing"
    assert waited.details == {
        "code": "downstream-retryable",
        "downstreamStatus": status,
        "retryAfter": answer["retryAfter"],
        "attempt": 1,
    }
    assert len(gw.history()) == 1

    assert gw.pipeline.write(change_id, attempt=1) == {"changeId": change_id, "status": "completed"}
    assert len(gw.history()) == 2


def test_a_throttled_read_makes_prepare_wait_with_backoff_growing_per_attempt(gw: Gateway) -> None:
    change_id = gw.submit(patch_telecom())
    gw.fhir.fail_next(http_error(429, retry_after="1", method="GET", rtype="Patient"), interactions=["read"])
    answer = gw.pipeline.prepare(change_id, attempt=4)
    assert answer["retry"] is True and answer["status"] == "accepted"
    assert answer["retryAfter"] >= 16, "backoff 2 s x 2^4, jittered down to at most half, beats Retry-After: 1"
    assert gw.wire(change_id)["status"] == "accepted"
    assert gw.last_event(change_id).details["attempt"] == 5
    assert gw.pipeline.prepare(change_id, attempt=5)["status"] == "writing"


def test_a_permanent_downstream_error_fails_the_write(gw: Gateway) -> None:
    change_id = writing(gw)
    gw.fhir.fail_next(http_error(422), interactions=["transaction"])
    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "failed"}
    record = gw.wire(change_id)
    assert record["error"]["type"] == "urn:writeback:problem:downstream-rejected"
    assert (
        record["error"]["status"] == 502 and record["error"]["detail"] == "POST Bundle: HTTP 422 Unprocessable Entity"
    )
    assert "result" not in record
    assert gw.events(change_id)[-2:] == ["writing", "failed"]
    assert gw.last_event(change_id).details == {"code": "downstream-rejected", "issues": []}
    assert len(gw.history()) == 1


def test_what_the_target_stored_differently_is_reported_as_drift() -> None:
    gw = make_gateway(fhir=DriftingFhirServer(clock=Clock()))
    change_id = writing(gw)
    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "completed"}
    record = gw.wire(change_id)
    assert record["result"]["verified"] is False
    assert gw.patient()["telecom"][0]["value"] == "5550100"
    assert gw.events(change_id)[-5:] == ["written", "verified", "drift", "provenance", "completed"]
    by_event = {e.event: e for e in gw.lineage(change_id)}
    assert by_event["verified"].details == {"verified": False, "driftPaths": ["Patient.telecom"]}
    assert by_event["drift"].details == {"paths": ["Patient.telecom"]}


# --- write: run again ---------------------------------------------------------------------------------------


class CountingPayloadStore(FakePayloadStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get(self, ref: PayloadRef) -> bytes:
        self.reads += 1
        return super().get(ref)


def test_the_write_step_reads_one_payload_and_writes_the_callers_reason() -> None:
    payloads = CountingPayloadStore()
    gw = make_gateway(payloads=payloads)
    change_id = writing(gw)
    payloads.reads = 0
    assert gw.pipeline.write(change_id)["status"] == "completed"
    assert payloads.reads == 1, "the write input (resource, reason, patch) is one payload"
    (provenance,) = gw.fhir.resources("Provenance")
    assert provenance["reason"] == [{"text": "the patient called in"}]


def test_a_plan_stored_by_the_previous_release_is_still_written(gw: Gateway) -> None:
    """Before, the ``proposed`` payload held the bare resource; the reason and patch came from the request."""
    change_id = writing(gw)
    record = gw.journal.load(change_id, fresh=True)
    assert record.plan is not None and record.plan.proposed is not None
    resource = json.loads(gw.payloads.get(record.plan.proposed))["resource"]
    bare = gw.payloads.put(change_id, json.dumps(resource).encode(), name="proposed")
    gw.journal.record(record, [], plan=record.plan.model_copy(update={"proposed": bare}))

    assert gw.pipeline.write(change_id)["status"] == "completed"
    assert gw.patient()["telecom"][0]["value"] == "555-0100"
    (provenance,) = gw.fhir.resources("Provenance")
    assert provenance["reason"] == [{"text": "the patient called in"}]


def test_a_write_run_twice_answers_the_same_and_writes_once(gw: Gateway) -> None:
    change_id = writing(gw)
    first = gw.pipeline.write(change_id)
    events, record = gw.events(change_id), gw.wire(change_id)
    assert gw.pipeline.write(change_id) == first == {"changeId": change_id, "status": "completed"}
    assert gw.events(change_id) == events and gw.wire(change_id) == record
    assert len(gw.history()) == 2 and len(gw.fhir.resources("Provenance")) == 1


def test_a_write_whose_answer_was_lost_is_recognised_as_done_on_the_next_attempt(gw: Gateway) -> None:
    change_id = writing(gw)
    gw.fhir.fail_next(RetryableError(detail="timed out", retry_after=1), interactions=["transaction"], after_apply=True)
    assert gw.pipeline.write(change_id)["retry"] is True
    landed = gw.patient()
    assert tagged_with(landed, change_id), "the write landed; only its answer was lost"

    assert gw.pipeline.write(change_id, attempt=1) == {"changeId": change_id, "status": "completed"}
    assert len(gw.history()) == 2, "no second version"
    assert len(gw.fhir.resources("Provenance")) == 1
    result = gw.wire(change_id)["result"]
    assert result["versionId"] == landed["meta"]["versionId"] and result["verified"] is True
    assert result["provenance"] == f"Provenance/{gw.fhir.resources('Provenance')[0]['id']}"
    written = next(e for e in gw.lineage(change_id) if e.event == "written")
    assert written.details["alreadyApplied"] is True


def test_a_write_rerun_in_a_process_with_a_stale_cached_record_writes_nothing_more(gw: Gateway) -> None:
    change_id = writing(gw)
    other = gw.another_process()
    other.journal.load(change_id)  # it cached the change while it was writing
    assert gw.pipeline.write(change_id)["status"] == "completed"
    events = gw.events(change_id)

    assert other.write(change_id) == {"changeId": change_id, "status": "completed"}
    assert len(gw.history()) == 2 and gw.events(change_id) == events


def test_a_change_approved_in_another_process_is_written_by_this_one(gw: Gateway) -> None:
    change_id, _ = awaiting(gw)  # this process cached the change as awaiting_approval
    elsewhere = ChangeJournal(gw.store, clock=gw.clock)
    ApprovalService(elsewhere, clock=gw.clock).decide(change_id, "approve", Approver("boss", None, "api"), None)
    assert gw.wire(change_id)["status"] == "writing"
    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "completed"}


def test_an_operator_retry_recorded_in_another_process_is_prepared_again(gw: Gateway) -> None:
    change_id = gw.submit(patch_telecom())
    gw.fhir.fail_next(http_error(403, method="GET", rtype="Patient"), interactions=["read"])
    assert gw.pipeline.prepare(change_id)["status"] == "failed"  # this process cached the change as failed
    operations = OperationsService(
        ChangeJournal(gw.store, clock=gw.clock), FakeMessagePublisher(), FakeSweepState(), clock=gw.clock
    )
    assert operations.retry(change_id, "operator").status == "accepted"
    assert gw.pipeline.prepare(change_id) == {"changeId": change_id, "status": "writing"}


def test_a_message_that_is_not_a_change_message_is_refused_for_good() -> None:
    with pytest.raises(PermanentError):
        parse_message(b'{"not": "a change"}')
    message = ChangeMessage(change_id="c1", target="local-ehr", kind="retry", attempt=1)
    assert parse_message(message.model_dump_json(by_alias=True).encode()) == message


def test_a_duplicate_start_of_a_change_past_accepted_changes_nothing(gw: Gateway) -> None:
    """The dispatcher reads no record: a second start of a change that ran finds it past ``accepted`` and stops."""
    change_id = gw.submit(patch_telecom())
    assert gw.pipeline.prepare_and_write(change_id)["status"] == "completed"
    events, versions = gw.events(change_id), len(gw.history())
    fresh = ChangePipeline(
        journal=ChangeJournal(gw.store, clock=gw.clock),
        payloads=gw.payloads,
        targets=TARGETS,
        policy=POLICY,
        fhir=lambda _: gw.fhir,
        clock=gw.clock,
    )
    assert fresh.prepare_and_write(change_id) == {"changeId": change_id, "status": "completed"}
    assert gw.events(change_id) == events and len(gw.history()) == versions


def test_a_message_naming_no_change_ends_its_orchestration_at_once(gw: Gateway) -> None:
    assert gw.pipeline.prepare_and_write("no-such-change") == {"changeId": "no-such-change", "status": "unknown"}


def test_an_allowed_change_is_planned_and_written_in_one_step_with_one_read_of_its_record(gw: Gateway) -> None:
    change_id = gw.submit(patch_telecom())
    calls: Counter[str] = Counter()
    counted = CountingProxy(gw.store, calls, "changes")
    fresh = pipeline_over(ChangeJournal(counted, clock=gw.clock), gw.payloads, gw.fhir, gw.clock)  # type: ignore[arg-type]
    assert fresh.prepare_and_write(change_id) == {"changeId": change_id, "status": "completed"}
    assert gw.events(change_id) == [*INTAKE_EVENTS, *PLANNED_EVENTS, "writing", *WRITTEN_EVENTS]
    assert calls == Counter({"changes.get": 1, "changes.index_resource": 1, "changes.transition": 2}), calls


# --- expire and fail ----------------------------------------------------------------------------------------


def test_expire_ends_a_change_still_awaiting_approval_once(gw: Gateway) -> None:
    change_id, answer = awaiting(gw)
    assert gw.pipeline.expire(change_id) == {"changeId": change_id, "status": "expired"}
    record = gw.wire(change_id)
    assert {k: v for k, v in record["approval"].items() if k not in ("round", "diffHash")} == {
        "required": True,
        "expiresAt": answer["expiresAt"],
        "paths": ["Patient.name"],
        "decision": "expired",
    }
    assert gw.events(change_id)[-2:] == ["awaiting_approval", "expired"]
    events = gw.events(change_id)
    assert gw.pipeline.expire(change_id) == {"changeId": change_id, "status": "expired"}
    assert gw.pipeline.write(change_id) == {"changeId": change_id, "status": "expired"}
    assert gw.events(change_id) == events and len(gw.history()) == 1


def test_expire_leaves_a_change_that_is_not_awaiting_approval_alone(gw: Gateway) -> None:
    change_id = writing(gw)
    events = gw.events(change_id)
    assert gw.pipeline.expire(change_id) == {"changeId": change_id, "status": "writing"}
    assert gw.events(change_id) == events


@pytest.mark.parametrize(
    ("detail", "shown"),
    [
        (
            "the target kept failing (downstream-retryable, HTTP 429)",
            "the target kept failing (downstream-retryable, HTTP 429)",
        ),
        ("", "the change could not be written"),
    ],
    ids=["detail-given", "no-detail"],
)
def test_fail_ends_a_running_change_as_retries_exhausted(gw: Gateway, detail: str, shown: str) -> None:
    change_id = writing(gw)
    assert gw.pipeline.fail(change_id, detail) == {"changeId": change_id, "status": "failed"}
    error = gw.wire(change_id)["error"]
    assert error == {
        "type": "urn:writeback:problem:downstream-rejected",
        "title": "Retries exhausted",
        "status": 502,
        "detail": shown,
    }
    assert gw.last_event(change_id).event == "failed"
    assert gw.last_event(change_id).details == {"code": "retries-exhausted"}
    assert gw.pipeline.write(change_id)["status"] == "failed" and len(gw.history()) == 1


def test_fail_leaves_a_finished_change_as_it_is(gw: Gateway) -> None:
    change_id = writing(gw)
    gw.pipeline.write(change_id)
    before, events = gw.wire(change_id), gw.events(change_id)
    assert gw.pipeline.fail(change_id, "boom") == {"changeId": change_id, "status": "completed"}
    assert gw.wire(change_id) == before and gw.events(change_id) == events


def test_fail_ends_a_change_still_awaiting_approval(gw: Gateway) -> None:
    change_id, _ = awaiting(gw)
    assert gw.pipeline.fail(change_id, "boom") == {"changeId": change_id, "status": "failed"}
    assert gw.wire(change_id)["error"]["detail"] == "boom"
    assert gw.events(change_id)[-2:] == ["awaiting_approval", "failed"]


def test_every_step_on_an_unknown_change_answers_unknown_and_stores_nothing(gw: Gateway) -> None:
    for step in (gw.pipeline.prepare, gw.pipeline.prepare_and_write, gw.pipeline.write, gw.pipeline.expire):
        assert step("nope") == {"changeId": "nope", "status": "unknown"}
    assert gw.store.get("nope") is None and gw.lineage("nope") == []
