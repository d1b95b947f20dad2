"""A write that meets 412 is merged onto the newer version with its ``meta`` as planned: a removal stays a removal.

The caller's change drops a meta element (a tag, a security label, ``meta.source``, ``meta.profile``); another
writer changes the resource before the write; the write gets 412 and the pipeline re-reads and merges. What the
target holds afterwards must be what the policy judged: the element gone, the other writer's change kept. A
downstream change to another meta element is kept; one to the same meta element is a conflict for a human, never
silently overwritten. The first tests run the pipeline over the fake FHIR server (through the real intake), the
last ones ``rebase`` itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.core.models import Operation
from shared.core.planning import CHANGE_TAG_SYSTEM, SOURCE_TAG_SYSTEM, Plan, PlanConflictError, rebase
from shared.core.policy import Policy
from tests.unit.test_change_pipeline import PATIENT, Gateway, make_gateway, tagged_with

META_POLICY_TEXT = """
version: "meta-merge-test"
sources:
  crm:
    app_ids: [crm]
    targets:
      local-ehr:
        Patient:
          operations: [update, patch]
          paths:
            Patient.telecom: allow
            Patient.meta.tag: allow
            Patient.meta.security: allow
            Patient.meta.source: allow
            Patient.meta.profile: allow
"""
META_POLICY = Policy.from_text(META_POLICY_TEXT)
RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
VERY_RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"}
SYNCED = {"system": "http://example.org/tags", "code": "synced"}
OTHER_TAG = {"system": "http://example.org/tags", "code": "reviewed"}
PROFILE = "http://example.org/StructureDefinition/patient"
LABELLED_META = {"security": [RESTRICTED], "tag": [SYNCED], "source": "http://example.org/crm", "profile": [PROFILE]}


def governed(resource: dict[str, Any]) -> dict[str, Any]:
    """What a caller governs of a stored resource's meta (no server elements, no gateway tags)."""
    meta = {k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
    tags = [t for t in meta.pop("tag", []) if t.get("system") not in (CHANGE_TAG_SYSTEM, SOURCE_TAG_SYSTEM)]
    return {**meta, **({"tag": tags} if tags else {})}


def labelled_gateway() -> Gateway:
    gw = make_gateway(policy=META_POLICY)
    gw.fhir.update({**PATIENT, "meta": LABELLED_META})
    return gw


def meta_patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"target": "local-ehr", "operation": "patch", "resourceRef": "Patient/p1", "patch": list(operations)}


def prepared(gw: Gateway, body: dict[str, Any]) -> str:
    change_id = gw.submit(body)
    assert gw.pipeline.prepare(change_id)["status"] == "writing", gw.wire(change_id)
    return change_id


def downstream_meta(gw: Gateway, **meta: Any) -> None:
    """Another writer changes meta elements at the target (no If-Match)."""
    current = gw.patient()
    gw.fhir.update({**current, "meta": {**current["meta"], **meta}})


# --- the pipeline over the fake FHIR server -------------------------------------------------------------------


@pytest.mark.parametrize("element", ["security", "tag", "source", "profile"])
def test_a_patch_removing_a_meta_element_still_removes_it_after_a_412(element: str) -> None:
    gw = labelled_gateway()
    change_id = prepared(gw, meta_patch({"op": "remove", "path": f"/meta/{element}"}))
    assert gw.wire(change_id)["plan"]["changedPaths"] == [f"Patient.meta.{element}"]
    gw.downstream_update(gender="other")

    assert gw.pipeline.write(change_id)["status"] == "completed"
    stored = gw.patient()
    assert element not in governed(stored), "the removal the policy judged was written"
    assert governed(stored) == {k: v for k, v in LABELLED_META.items() if k != element}, "the other labels are kept"
    assert stored["gender"] == "other", "the downstream change is kept"
    assert tagged_with(stored, change_id)
    assert "merged-on-conflict" in gw.events(change_id)
    assert gw.wire(change_id)["result"]["verified"] is True


def test_an_update_that_drops_its_last_tag_still_drops_it_after_a_412() -> None:
    gw = make_gateway(policy=META_POLICY)
    earlier_write = [{"system": CHANGE_TAG_SYSTEM, "code": "c-0"}, {"system": SOURCE_TAG_SYSTEM, "code": "crm"}]
    gw.fhir.update({**PATIENT, "meta": {**LABELLED_META, "tag": [SYNCED, *earlier_write]}})
    read = gw.patient()
    # what a caller sends back after removing its tag from what it read: only the gateway's own tags are left
    gateway_tags = [t for t in read["meta"]["tag"] if t["system"] in (CHANGE_TAG_SYSTEM, SOURCE_TAG_SYSTEM)]
    resource = {**read, "meta": {**read["meta"], "tag": gateway_tags}}
    change_id = prepared(gw, {"target": "local-ehr", "operation": "update", "resource": resource})
    assert gw.wire(change_id)["plan"]["changedPaths"] == ["Patient.meta.tag"]
    gw.downstream_update(gender="other")

    assert gw.pipeline.write(change_id)["status"] == "completed"
    stored = gw.patient()
    assert "tag" not in governed(stored) and stored["gender"] == "other"
    assert governed(stored)["security"] == [RESTRICTED]


def test_removing_one_of_two_labels_after_a_412_removes_that_one_only() -> None:
    gw = make_gateway(policy=META_POLICY)
    gw.fhir.update({**PATIENT, "meta": {"security": [RESTRICTED, VERY_RESTRICTED]}})
    change_id = prepared(gw, meta_patch({"op": "remove", "path": "/meta/security/1"}))
    gw.downstream_update(gender="other")
    assert gw.pipeline.write(change_id)["status"] == "completed"
    assert governed(gw.patient()) == {"security": [RESTRICTED]}


def test_a_downstream_change_to_another_meta_element_is_kept() -> None:
    gw = labelled_gateway()
    change_id = prepared(gw, meta_patch({"op": "remove", "path": "/meta/tag"}))
    downstream_meta(gw, security=[RESTRICTED, VERY_RESTRICTED])

    assert gw.pipeline.write(change_id)["status"] == "completed"
    stored = governed(gw.patient())
    assert "tag" not in stored, "ours"
    assert stored["security"] == [RESTRICTED, VERY_RESTRICTED], "theirs, not lost"
    merged = next(e for e in gw.lineage(change_id) if e.event == "merged-on-conflict")
    assert merged.details["downstreamPaths"] == ["Patient.meta.security"]


def test_a_downstream_change_to_the_same_meta_element_is_a_conflict_not_a_lost_update() -> None:
    gw = labelled_gateway()
    change_id = prepared(gw, meta_patch({"op": "remove", "path": "/meta/tag"}))
    downstream_meta(gw, tag=[SYNCED, OTHER_TAG])
    theirs = gw.patient()

    assert gw.pipeline.write(change_id)["status"] == "conflict"
    record = gw.wire(change_id)
    assert record["plan"]["conflict"]["overlap"] == ["Patient.meta.tag"]
    assert record["error"]["type"] == "urn:writeback:problem:merge-conflict"
    assert gw.patient() == theirs, "nothing written over the other writer's tag"


def test_the_same_removal_made_downstream_is_not_a_conflict() -> None:
    gw = labelled_gateway()
    change_id = prepared(gw, meta_patch({"op": "remove", "path": "/meta/security"}))
    current = gw.patient()
    gw.fhir.update({**current, "meta": {k: v for k, v in current["meta"].items() if k != "security"}})
    assert gw.pipeline.write(change_id)["status"] == "completed"
    assert "security" not in governed(gw.patient())


def test_a_removal_planned_on_an_older_base_version_is_merged_as_a_removal_too() -> None:
    gw = labelled_gateway()
    base = gw.patient()["meta"]["versionId"]
    gw.downstream_update(gender="other")  # the caller read ``base``; the target has moved on before the plan
    change_id = prepared(gw, meta_patch({"op": "remove", "path": "/meta/security"}) | {"baseVersion": base})
    assert gw.wire(change_id)["plan"]["changedPaths"] == ["Patient.meta.security"]

    assert gw.pipeline.write(change_id)["status"] == "completed"
    stored = gw.patient()
    assert "security" not in governed(stored) and stored["gender"] == "other"


# --- rebase itself ------------------------------------------------------------------------------------------------


def version(resource: dict[str, Any], version_id: str, **meta: Any) -> dict[str, Any]:
    """``resource`` as the target stores it at ``version_id``, with the server's meta and another change's tags."""
    gateway_tags = [
        {"system": CHANGE_TAG_SYSTEM, "code": f"c-{version_id}"},
        {"system": SOURCE_TAG_SYSTEM, "code": "x"},
    ]
    caller_tags = meta.pop("tag", [])
    return {
        **resource,
        "meta": {
            "versionId": version_id,
            "lastUpdated": "2026-01-01T00:00:00Z",
            **meta,
            "tag": caller_tags + gateway_tags,
        },
    }


def plan_on(base: dict[str, Any], proposed: dict[str, Any]) -> Plan:
    return Plan(
        operation=Operation.PATCH,
        resource_type="Patient",
        resource_id="p1",
        base_version=None,
        current_version=base["meta"]["versionId"],
        proposed=proposed,
        diff=[],
        changed_paths=[],
    )


def test_rebase_keeps_a_planned_removal_and_ignores_server_meta_and_gateway_tags() -> None:
    base = version(PATIENT, "a", security=[RESTRICTED], source="http://example.org/crm", tag=[SYNCED])
    planned = {**PATIENT, "meta": {"source": "http://example.org/crm", "tag": [SYNCED]}}  # the label removed
    current = version(
        {**PATIENT, "gender": "other"}, "b", security=[RESTRICTED], source="http://example.org/crm", tag=[SYNCED]
    )

    rebased = rebase(plan_on(base, planned), current=current, current_version='W/"b"', base=base)
    assert rebased.proposed["meta"] == {"source": "http://example.org/crm", "tag": [SYNCED]}
    assert rebased.proposed["gender"] == "other"
    assert rebased.changed_paths == ["Patient.meta.security"]
    assert rebased.downstream_paths == ["Patient.gender"], "versionId, lastUpdated and gateway tags are not changes"
    assert rebased.current_version == "b" and rebased.merged and rebased.operation is Operation.PATCH


def test_rebase_of_a_plan_removing_all_meta_keeps_a_downstream_meta_change_elsewhere() -> None:
    base = version(PATIENT, "a", tag=[SYNCED])
    current = version(PATIENT, "b", tag=[SYNCED], profile=[PROFILE])
    rebased = rebase(plan_on(base, dict(PATIENT)), current=current, current_version=None, base=base)
    assert rebased.proposed["meta"] == {"profile": [PROFILE]}
    assert rebased.changed_paths == ["Patient.meta.tag"] and rebased.current_version == "b"


def test_rebase_refuses_to_overwrite_a_downstream_change_to_the_same_meta_element() -> None:
    base = version(PATIENT, "a", security=[RESTRICTED])
    current = version(PATIENT, "b", security=[VERY_RESTRICTED])
    with pytest.raises(PlanConflictError) as clash:
        rebase(plan_on(base, dict(PATIENT)), current=current, current_version="b", base=base)
    assert clash.value.overlap == ["Patient.meta.security"]
