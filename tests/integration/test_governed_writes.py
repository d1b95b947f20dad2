"""Governed writes against the real local FHIR server, through intake, prepare and write as the activities run them.

What a user or operator sees: the change's status, plan (changed paths, decision, reasons) and error, and the
versions the FHIR server holds. Three guarantees:

- labels are under the policy: a caller's ``meta.security``, ``meta.tag``, ``meta.profile`` and ``meta.source`` are
  changed paths the policy decides on, on create, update and patch (the gateway's own tags are not);
- an update or patch is version-checked (``If-Match``) or not sent at all;
- outside ``transaction`` mode the write sends what the policy judged (the planned elements), never the caller's
  raw JSON Patch, whose operations a target may apply differently;
- a write that meets 412 is merged onto the newer version with its meta as planned: a tag or label the change
  removed stays removed, and another writer's change to another meta element is kept (to the same one: a conflict).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import reset_token_providers, token_provider_for
from shared.api.caller_identity import ROLE_SUBMIT
from shared.app.intake import IntakeService
from shared.app.pipeline import ChangePipeline
from shared.bootstrap import build
from shared.config import Settings
from shared.core.models import Principal
from shared.core.policy import Policy
from shared.core.targets import TargetConfig, TargetRegistry
from shared.fakes.messages import FakeMessagePublisher
from shared.fakes.stores import FakeChangeStore, FakeIdempotencyStore, FakePayloadStore, FakeSweepState
from tests.unit.test_meta_merge_on_conflict import META_POLICY_TEXT

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHANGE_TAG = "urn:writeback:change"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
VITALS_PROFILE = "http://hl7.org/fhir/StructureDefinition/heartrate"
RESTRICTED = {"system": CONFIDENTIALITY, "code": "R"}

TEST_POLICY = """
version: "labels-test"
sources:
  crm:
    app_ids: [crm]
    targets:
      local-ehr:
        Patient:
          operations: [update, patch]
          paths:
            Patient.telecom: allow
            Patient.extension: allow
  vitals-app:
    app_ids: [vitals-app]
    targets:
      local-ehr:
        Observation:
          operations: [create]
          paths:
            "*": allow
            Observation.meta: deny
"""


@dataclass
class Governed:
    """The use cases over fake stores and the real FHIR server; one call runs a change as the orchestration does."""

    intake: IntakeService
    pipeline: ChangePipeline
    store: FakeChangeStore
    client: HttpFhirClient

    def run(self, body: dict[str, Any], *, app: str = "crm") -> dict[str, Any]:
        """Submit ``body`` as ``app``, prepare it and (when it gets that far) write it: the change's final wire form."""
        principal = Principal(app_id=app, user_id="u1", roles=[ROLE_SUBMIT])
        accepted = self.intake.submit(principal, uuid.uuid4().hex, json.dumps(body).encode())
        change_id = accepted.change.change_id
        if self.pipeline.prepare(change_id)["status"] == "writing":
            self.pipeline.write(change_id)
        record = self.store.get(change_id)
        assert record is not None
        return record.to_wire()

    def versions(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """Every version the FHIR server holds, newest first."""
        return self.client.versions(resource_type, resource_id)

    def tagged(self, resource_type: str, change_id: str) -> list[dict[str, Any]]:
        found = self.client.search(resource_type, {"_tag": f"{CHANGE_TAG}|{change_id}"})
        return [e["resource"] for e in found.get("entry", [])]


@pytest.fixture
def governed(fhir: Any, token_endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Governed]]:
    monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", token_endpoint.identity_header)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    reset_token_providers()

    def make(
        policy: str = TEST_POLICY, *, provenance: str = "transaction", capabilities: dict[str, Any] | None = None
    ) -> Governed:
        target = TargetConfig.model_validate(
            {
                "id": "local-ehr",
                "base_url": fhir.base_url,
                "auth": {"type": "managed_identity", "scope": "api://local-ehr/.default"},
                "provenance": provenance,
                "capabilities": capabilities or {},
            }
        )
        client = HttpFhirClient(target, tokens=token_provider_for(target, managed_identity_client_id=None))
        gateway = build(
            Settings(policy_file=REPO / "config" / "policy.yaml"),
            change_store=FakeChangeStore(),
            idempotency_store=FakeIdempotencyStore(),
            sweep_state=FakeSweepState(),
            payload_store=FakePayloadStore(),
            publisher=FakeMessagePublisher(),
            targets=TargetRegistry([target]),
            policy=Policy.from_text(policy),
            fhir=lambda _: client,
        )
        return Governed(gateway.intake, gateway.pipeline, gateway.change_store, client)

    yield make
    reset_token_providers()


def shipped_policy() -> str:
    return (REPO / "config" / "policy.yaml").read_text(encoding="utf-8")


def seed_patient(gov: Governed, **elements: Any) -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": f"g-{uuid.uuid4().hex[:10]}", "gender": "female", **elements}
    stored = gov.client.update(patient).resource
    assert stored is not None
    return stored


def heart_rate(**elements: Any) -> dict[str, Any]:
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
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        **elements,
    }


def create(resource: dict[str, Any]) -> dict[str, Any]:
    return {"target": "local-ehr", "operation": "create", "resource": resource}


def update_of(resource: dict[str, Any], **elements: Any) -> dict[str, Any]:
    return {"target": "local-ehr", "operation": "update", "resource": {**resource, **elements}}


def denied_paths(change: dict[str, Any]) -> list[str]:
    return [issue["path"] for issue in change["error"]["issues"]]


# --- A: labels under the policy ---------------------------------------------------------------------------------


def test_an_explicit_meta_deny_refuses_a_create_carrying_tags(governed: Callable[..., Governed]) -> None:
    gov = governed()
    tag = {"system": "http://example.org/tags", "code": "from-the-app"}
    change = gov.run(create(heart_rate(meta={"tag": [tag]})), app="vitals-app")
    assert change["status"] == "rejected", change
    assert change["plan"]["decision"] == "deny"
    assert "Observation.meta.tag" in change["plan"]["changedPaths"]
    assert denied_paths(change) == ["Observation.meta.tag"]
    assert gov.tagged("Observation", change["changeId"]) == []


def test_a_security_label_needs_a_rule_of_its_own(governed: Callable[..., Governed]) -> None:
    labelled = create(heart_rate(meta={"security": [RESTRICTED]}))
    gov = governed(TEST_POLICY.replace("            Observation.meta: deny\n", ""))  # "*": allow alone
    change = gov.run(labelled, app="vitals-app")
    assert change["status"] == "rejected", change
    assert denied_paths(change) == ["Observation.meta.security"]
    assert gov.tagged("Observation", change["changeId"]) == []

    gov = governed(TEST_POLICY.replace("Observation.meta: deny", "Observation.meta.security: allow"))
    change = gov.run(labelled, app="vitals-app")
    assert change["status"] == "completed", change
    [stored] = gov.tagged("Observation", change["changeId"])
    assert stored["meta"]["security"] == [RESTRICTED]


def test_the_shipped_policy_lets_vitals_app_claim_a_profile_but_not_label(governed: Callable[..., Governed]) -> None:
    gov = governed(shipped_policy())
    change = gov.run(create(heart_rate(meta={"profile": [VITALS_PROFILE]})), app="vitals-app")
    assert change["status"] == "completed", change
    assert "Observation.meta.profile" in change["plan"]["changedPaths"]
    [stored] = gov.tagged("Observation", change["changeId"])
    assert stored["meta"]["profile"] == [VITALS_PROFILE]
    assert {"system": CHANGE_TAG, "code": change["changeId"]} in stored["meta"]["tag"]

    labelled = gov.run(create(heart_rate(meta={"security": [RESTRICTED]})), app="vitals-app")
    assert labelled["status"] == "rejected" and denied_paths(labelled) == ["Observation.meta.security"]


def test_an_update_or_patch_that_labels_a_patient_is_judged(governed: Callable[..., Governed]) -> None:
    gov = governed(shipped_policy())
    patient = seed_patient(gov)
    update = update_of(patient, meta={"security": [RESTRICTED]})
    patch = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": f"Patient/{patient['id']}",
        "patch": [{"op": "add", "path": "/meta/security", "value": [RESTRICTED]}],
    }
    for body in (update, patch):
        change = gov.run(body)
        assert change["status"] == "rejected", change
        assert change["plan"]["changedPaths"] == ["Patient.meta.security"]
        assert denied_paths(change) == ["Patient.meta.security"]
    assert len(gov.versions("Patient", patient["id"])) == 1


def test_an_update_that_sends_no_meta_keeps_the_targets_labels(governed: Callable[..., Governed]) -> None:
    gov = governed(shipped_policy())
    patient = seed_patient(gov, meta={"security": [RESTRICTED]}, telecom=[{"system": "phone", "value": "1"}])
    without_meta = {k: v for k, v in patient.items() if k != "meta"}
    change = gov.run(update_of(without_meta, telecom=[{"system": "phone", "value": "2"}]))
    assert change["status"] == "completed", change
    assert change["plan"]["changedPaths"] == ["Patient.telecom"]
    written = gov.versions("Patient", patient["id"])[0]
    assert written["meta"]["security"] == [RESTRICTED] and written["telecom"][0]["value"] == "2"


def test_resending_the_gateways_own_tags_changes_nothing(governed: Callable[..., Governed]) -> None:
    gov = governed(shipped_policy())
    patient = seed_patient(gov, telecom=[{"system": "phone", "value": "1"}])
    first = gov.run(update_of(patient, telecom=[{"system": "phone", "value": "2"}]))
    assert first["status"] == "completed", first
    current = gov.versions("Patient", patient["id"])[0]
    # the caller resends what it read, the gateway's change and source tags included, with a new number
    again = gov.run(update_of(current, telecom=[{"system": "phone", "value": "3"}]))
    assert again["status"] == "completed", again
    assert again["plan"]["changedPaths"] == ["Patient.telecom"]
    assert gov.versions("Patient", patient["id"])[0]["telecom"] == [{"system": "phone", "value": "3"}]


# --- B: no update without If-Match --------------------------------------------------------------------------------


def test_a_target_without_if_match_gets_no_unconditional_update(governed: Callable[..., Governed]) -> None:
    for provenance in ("transaction", "after"):
        gov = governed(shipped_policy(), provenance=provenance, capabilities={"if_match": False})
        patient = seed_patient(gov, telecom=[{"system": "phone", "value": "1"}])
        change = gov.run(update_of(patient, telecom=[{"system": "phone", "value": "2"}]))
        assert change["status"] == "failed", change
        assert change["error"]["type"] == "urn:writeback:problem:if-match-unavailable"
        assert "capabilities.if_match" in change["error"]["detail"]
        assert len(gov.versions("Patient", patient["id"])) == 1


# --- C: the write carries what the policy judged --------------------------------------------------------------------


def test_a_patch_is_written_as_planned_not_as_the_caller_wrote_it(governed: Callable[..., Governed]) -> None:
    gov = governed(provenance="after")
    flag = {"url": "http://example.org/flag", "valueBoolean": True}
    part = {"url": "part", "valueString": "x"}
    patient = seed_patient(
        gov,
        extension=[
            flag,
            {"url": "http://example.org/a", "extension": [part]},
            {"url": "http://example.org/b", "extension": [part]},
        ],
    )
    # RFC 6902: "move" removes first, so after the removal /extension/1 is the "b" extension. A JSON Patch
    # implementation that resolves the target before removing (as the local server's does) puts it into "a".
    ops = [{"op": "move", "from": "/extension/0", "path": "/extension/1/extension/0"}]
    change = gov.run(
        {"target": "local-ehr", "operation": "patch", "resourceRef": f"Patient/{patient['id']}", "patch": ops}
    )
    assert change["status"] == "completed", change
    assert change["plan"]["changedPaths"] == ["Patient.extension"] and change["plan"]["decision"] == "allow"
    written, _ = gov.versions("Patient", patient["id"])
    assert written["extension"] == [
        {"url": "http://example.org/a", "extension": [part]},
        {"url": "http://example.org/b", "extension": [flag, part]},
    ]
    assert change["result"]["verified"] is True
    assert (
        written["gender"] == "female" and {"system": CHANGE_TAG, "code": change["changeId"]} in written["meta"]["tag"]
    )


# --- D: meta after a 412 --------------------------------------------------------------------------------------------

META_POLICY = META_POLICY_TEXT
SYNCED = {"system": "http://example.org/tags", "code": "synced"}
VERY_RESTRICTED = {"system": CONFIDENTIALITY, "code": "V"}
PATIENT_PROFILE = "http://example.org/StructureDefinition/patient"
LABELS = {"security": [RESTRICTED], "tag": [SYNCED], "source": "http://example.org/crm", "profile": [PATIENT_PROFILE]}


def callers_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """The meta elements a caller governs, as the FHIR server holds them (no server elements, no gateway tags)."""
    meta = {k: v for k, v in resource.get("meta", {}).items() if k in ("security", "source", "profile")}
    tags = [t for t in resource.get("meta", {}).get("tag", []) if not t["system"].startswith("urn:writeback:")]
    return {**meta, **({"tag": tags} if tags else {})}


def run_past_a_downstream_edit(gov: Governed, body: dict[str, Any], edit: Callable[[], None]) -> dict[str, Any]:
    """Plan ``body``, let another writer change the resource (``edit``), then write: the write meets 412."""
    principal = Principal(app_id="crm", user_id="u1", roles=[ROLE_SUBMIT])
    change_id = gov.intake.submit(principal, uuid.uuid4().hex, json.dumps(body).encode()).change.change_id
    assert gov.pipeline.prepare(change_id)["status"] == "writing", gov.store.get(change_id)
    edit()
    gov.pipeline.write(change_id)
    record = gov.store.get(change_id)
    assert record is not None
    return record.to_wire()


def edit_at_target(gov: Governed, resource_id: str, **elements: Any) -> Callable[[], None]:
    """Another writer's unconditional update of ``resource_id`` (its ``meta`` merged into the stored one)."""

    def edit() -> None:
        current = gov.client.read("Patient", resource_id).resource
        assert current is not None
        meta = {**current.get("meta", {}), **elements.pop("meta", {})}
        assert gov.client.update({**current, **elements, "meta": meta}).status == 200

    return edit


@pytest.mark.parametrize("provenance", ["transaction", "after"])
@pytest.mark.parametrize("element", ["security", "tag", "source", "profile"])
def test_a_meta_element_a_patch_removed_stays_removed_after_a_412(
    governed: Callable[..., Governed], provenance: str, element: str
) -> None:
    gov = governed(META_POLICY, provenance=provenance)
    patient = seed_patient(gov, meta=LABELS)
    remove = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": f"Patient/{patient['id']}",
        "patch": [{"op": "remove", "path": f"/meta/{element}"}],
    }
    change = run_past_a_downstream_edit(gov, remove, edit_at_target(gov, patient["id"], gender="other"))
    assert change["status"] == "completed", change
    assert change["plan"]["changedPaths"] == [f"Patient.meta.{element}"]
    written, downstream, _ = gov.versions("Patient", patient["id"])
    assert downstream["gender"] == "other" and written["gender"] == "other"
    assert callers_meta(written) == {k: v for k, v in LABELS.items() if k != element}
    assert {"system": CHANGE_TAG, "code": change["changeId"]} in written["meta"]["tag"]
    assert change["result"]["verified"] is True


def test_an_update_that_drops_its_tag_still_drops_it_after_a_412(governed: Callable[..., Governed]) -> None:
    gov = governed(META_POLICY)
    patient = seed_patient(gov, meta=LABELS, telecom=[{"system": "phone", "value": "1"}])
    first = gov.run(update_of(patient, telecom=[{"system": "phone", "value": "2"}]))  # puts the gateway's tags on
    assert first["status"] == "completed", first
    read = gov.versions("Patient", patient["id"])[0]
    ours_only = [t for t in read["meta"]["tag"] if t["system"].startswith("urn:writeback:")]
    untag = update_of(read, meta={**read["meta"], "tag": ours_only})  # the caller removed its tag from what it read
    change = run_past_a_downstream_edit(gov, untag, edit_at_target(gov, patient["id"], gender="other"))
    assert change["status"] == "completed", change
    written = gov.versions("Patient", patient["id"])[0]
    assert "tag" not in callers_meta(written) and written["gender"] == "other"
    assert callers_meta(written)["security"] == [RESTRICTED]


def test_a_downstream_label_on_another_meta_element_survives_the_merge(governed: Callable[..., Governed]) -> None:
    gov = governed(META_POLICY)
    patient = seed_patient(gov, meta=LABELS)
    untag = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": f"Patient/{patient['id']}",
        "patch": [{"op": "remove", "path": "/meta/tag"}],
    }
    relabel = edit_at_target(gov, patient["id"], meta={"security": [RESTRICTED, VERY_RESTRICTED]})
    change = run_past_a_downstream_edit(gov, untag, relabel)
    assert change["status"] == "completed", change
    written = callers_meta(gov.versions("Patient", patient["id"])[0])
    assert "tag" not in written and written["security"] == [RESTRICTED, VERY_RESTRICTED]


def test_a_downstream_change_to_the_same_meta_element_is_a_conflict(governed: Callable[..., Governed]) -> None:
    gov = governed(META_POLICY)
    patient = seed_patient(gov, meta=LABELS)
    unlabel = {
        "target": "local-ehr",
        "operation": "patch",
        "resourceRef": f"Patient/{patient['id']}",
        "patch": [{"op": "remove", "path": "/meta/security"}],
    }
    relabel = edit_at_target(gov, patient["id"], meta={"security": [VERY_RESTRICTED]})
    change = run_past_a_downstream_edit(gov, unlabel, relabel)
    assert change["status"] == "conflict", change
    assert change["plan"]["conflict"]["overlap"] == ["Patient.meta.security"]
    newest = gov.versions("Patient", patient["id"])[0]
    assert callers_meta(newest)["security"] == [VERY_RESTRICTED], "the other writer's label stands"
    assert len(gov.versions("Patient", patient["id"])) == 2
