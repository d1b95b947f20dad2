"""Change planning: proposed resource, diff current -> proposed, element paths, three-way merge and its conflicts."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonpatch
import pytest

from shared.core.errors import ConflictError, FhirValidationError, RequestError
from shared.core.models import ChangeRequest, Operation
from shared.core.planning import (
    CHANGE_TAG_SYSTEM,
    SOURCE_TAG_SYSTEM,
    PatchApplyError,
    Plan,
    PlanConflictError,
    element_paths,
    governed_meta,
    plan_change,
)

TAGS = [{"system": "http://example.org/tags", "code": "synced"}]
GATEWAY_TAGS = [{"system": CHANGE_TAG_SYSTEM, "code": "c-1"}, {"system": SOURCE_TAG_SYSTEM, "code": "crm"}]
RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1",
    "meta": {
        "versionId": "3",
        "lastUpdated": "2024-01-02T03:04:05Z",
        "profile": ["http://example.org/StructureDefinition/p"],
        "tag": TAGS,
    },
    "identifier": [{"system": "http://hospital.example.org/mrn", "value": "MRN-1"}],
    "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}, {"use": "nickname", "given": ["JJ"]}],
    "telecom": [
        {"system": "phone", "value": "555-0100", "use": "mobile"},
        {"system": "email", "value": "jane@example.org"},
    ],
    "gender": "female",
    "birthDate": "1980-05-17",
    "deceasedBoolean": False,
    "address": [{"use": "home", "line": ["1 Main St"], "city": "Springfield", "postalCode": "62701"}],
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "obs-1",
    "meta": {"versionId": "7"},
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/pat-1"},
    "effectiveDateTime": "2024-01-02T03:04:05Z",
    "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
}

Mutation = Callable[[dict[str, Any]], object]


def patient(mutate: Mutation | None = None, **meta: Any) -> dict[str, Any]:
    resource = copy.deepcopy(PATIENT)
    resource["meta"].update(meta)
    if mutate is not None:
        mutate(resource)
    return resource


def update(resource: dict[str, Any], base_version: str | None = "3") -> ChangeRequest:
    return ChangeRequest(target="ehr", operation=Operation.UPDATE, resource=resource, base_version=base_version)


def patch(ops: list[dict[str, Any]], ref: str = "Patient/pat-1", base_version: str | None = "3") -> ChangeRequest:
    return ChangeRequest.model_validate(
        {"target": "ehr", "operation": "patch", "resourceRef": ref, "patch": ops, "baseVersion": base_version}
    )


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


def planned_form(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource as a plan's diff sees it: its meta reduced to the governed part, and always there."""
    return {**without_meta(resource), "meta": governed_meta(resource.get("meta"))}


def assert_diff_replays(current: dict[str, Any], plan: Plan) -> None:
    """The plan's diff turns the current resource into the proposed one (meta as its governed part)."""
    assert jsonpatch.apply_patch(planned_form(current), plan.diff) == planned_form(plan.proposed)


# --- create -----------------------------------------------------------------------------------------------------


def test_create_proposes_the_resource_without_id_and_server_meta() -> None:
    request = ChangeRequest(target="ehr", operation=Operation.CREATE, resource=patient())
    plan = plan_change(request, current=None, current_version=None)
    assert plan.operation is Operation.CREATE
    assert (plan.resource_type, plan.resource_id, plan.current_version) == ("Patient", None, None)
    assert "id" not in plan.proposed
    assert plan.proposed["meta"] == {"profile": PATIENT["meta"]["profile"], "tag": TAGS}
    assert plan.proposed["telecom"] == PATIENT["telecom"]
    assert plan.changed_paths == [
        "Patient.address",
        "Patient.birthDate",
        "Patient.deceased[x]",
        "Patient.gender",
        "Patient.identifier",
        "Patient.meta.profile",
        "Patient.meta.tag",
        "Patient.name",
        "Patient.telecom",
    ]
    assert all(op["op"] == "add" for op in plan.diff)
    assert jsonpatch.apply_patch({"resourceType": "Patient", "meta": {}}, plan.diff) == planned_form(plan.proposed)
    assert not plan.is_noop and not plan.merged


def test_create_plans_the_callers_labels_but_never_the_gateways_tags() -> None:
    sent = patient(security=[RESTRICTED], source="http://crm.example.org", tag=[*TAGS, *GATEWAY_TAGS])
    plan = plan_change(
        ChangeRequest(target="ehr", operation=Operation.CREATE, resource=sent), current=None, current_version=None
    )
    assert plan.proposed["meta"] == {
        "profile": PATIENT["meta"]["profile"],
        "tag": TAGS,
        "security": [RESTRICTED],
        "source": "http://crm.example.org",
    }
    meta_paths = [p for p in plan.changed_paths if ".meta." in p]
    assert meta_paths == ["Patient.meta.profile", "Patient.meta.security", "Patient.meta.source", "Patient.meta.tag"]


def test_create_with_only_server_meta_or_gateway_tags_plans_no_meta() -> None:
    sent = patient(lambda r: r.update(meta={"versionId": "9", "tag": GATEWAY_TAGS}))
    plan = plan_change(
        ChangeRequest(target="ehr", operation=Operation.CREATE, resource=sent), current=None, current_version=None
    )
    assert "meta" not in plan.proposed
    assert not [p for p in plan.changed_paths if ".meta" in p]


def test_create_of_a_bare_resource_is_not_a_noop() -> None:
    request = ChangeRequest(target="ehr", operation=Operation.CREATE, resource={"resourceType": "Patient"})
    plan = plan_change(request, current=None, current_version=None)
    assert (plan.diff, plan.changed_paths, plan.is_noop) == ([], [], False)


# --- update -----------------------------------------------------------------------------------------------------


def _phone(r: dict[str, Any]) -> None:
    r["telecom"][0]["value"] = "555-0199"


def _phone_and_address(r: dict[str, Any]) -> None:
    _phone(r)
    r["address"][0]["city"] = "Shelbyville"


UPDATE_CASES: list[tuple[str, Mutation, list[str]]] = [
    ("resends unchanged foreign fields", _phone, ["Patient.telecom"]),
    ("changes two elements", _phone_and_address, ["Patient.address", "Patient.telecom"]),
    ("adds an element", lambda r: r.update(maritalStatus={"text": "married"}), ["Patient.maritalStatus"]),
    ("drops an element", lambda r: r.pop("address"), ["Patient.address"]),
    ("appends to a list", lambda r: r["name"].append({"family": "Roe"}), ["Patient.name"]),
    ("reorders a list", lambda r: r["name"].reverse(), ["Patient.name"]),
    (
        "changes a choice type",
        lambda r: (r.pop("deceasedBoolean"), r.update(deceasedDateTime="2024-01-01")),
        ["Patient.deceased[x]"],
    ),
    (
        "extends a primitive",
        lambda r: r.update(_birthDate={"extension": [{"url": "http://x.org/a", "valueCode": "e"}]}),
        ["Patient.birthDate"],
    ),
    (
        "sends a tag of its own",
        lambda r: r.update(meta={"versionId": "1", "tag": [{"code": "mine"}]}),
        ["Patient.meta.tag"],
    ),
    ("labels it", lambda r: r["meta"].update(security=[RESTRICTED]), ["Patient.meta.security"]),
    ("names its source", lambda r: r["meta"].update(source="http://crm.example.org"), ["Patient.meta.source"]),
    ("extends its source", lambda r: r["meta"].update(_source={"id": "s"}), ["Patient.meta.source"]),
    ("claims another profile", lambda r: r["meta"].update(profile=["http://example.org/q"]), ["Patient.meta.profile"]),
    ("sends only the gateway's tags", lambda r: r["meta"].update(tag=GATEWAY_TAGS), ["Patient.meta.tag"]),
    ("sends only server meta", lambda r: r.update(meta={"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"}), []),
    ("sends no meta", lambda r: r.pop("meta"), []),
    ("resends everything", lambda r: None, []),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in UPDATE_CASES], ids=[c[0] for c in UPDATE_CASES])
def test_update_changes_only_the_elements_that_differ(mutate: Mutation, expected: list[str]) -> None:
    current = patient()
    plan = plan_change(update(patient(mutate)), current=current, current_version="3")
    assert plan.changed_paths == expected
    assert plan.is_noop is (not expected)
    assert (plan.resource_id, plan.base_version, plan.current_version, plan.merged) == ("pat-1", "3", "3", False)
    assert_diff_replays(current, plan)


def test_update_diff_is_the_json_patch_of_the_change() -> None:
    plan = plan_change(update(patient(_phone)), current=patient(), current_version="3")
    assert plan.diff == [{"op": "replace", "path": "/telecom/0/value", "value": "555-0199"}]


def test_update_changes_the_meta_elements_it_sends_and_keeps_the_others() -> None:
    current = patient(security=[RESTRICTED])
    sent = patient(_phone)
    sent["meta"] = {"versionId": "1", "tag": [{"system": "http://example.org/tags", "code": "other"}]}
    plan = plan_change(update(sent), current=current, current_version="3")
    assert plan.proposed["meta"] == {
        "profile": PATIENT["meta"]["profile"],
        "tag": [{"system": "http://example.org/tags", "code": "other"}],
        "security": [RESTRICTED],
    }
    assert plan.changed_paths == ["Patient.meta.tag", "Patient.telecom"]


def test_update_of_a_target_without_meta_proposes_none() -> None:
    current = without_meta(patient())
    plan = plan_change(update(without_meta(patient(_phone))), current=current, current_version="3")
    assert "meta" not in plan.proposed


def test_the_gateways_own_tags_are_neither_planned_nor_kept() -> None:
    current = patient(tag=[*GATEWAY_TAGS, *TAGS])
    plan = plan_change(update(patient(_phone, tag=[*TAGS, GATEWAY_TAGS[0]])), current=current, current_version="3")
    assert plan.changed_paths == ["Patient.telecom"]
    assert plan.proposed["meta"]["tag"] == TAGS  # the writer puts its own tags back, for this change


def test_update_of_another_resource_is_refused() -> None:
    other = patient(lambda r: r.update(id="pat-2"))
    with pytest.raises(RequestError) as caught:
        plan_change(update(other), current=patient(), current_version="3")
    assert [i.path for i in caught.value.issues] == ["Patient.id"]


def test_target_of_another_type_is_refused() -> None:
    with pytest.raises(RequestError) as caught:
        plan_change(
            patch([{"op": "remove", "path": "/gender"}]), current=copy.deepcopy(OBSERVATION), current_version="3"
        )
    assert [i.path for i in caught.value.issues] == ["Patient.resourceType"]


# --- patch --------------------------------------------------------------------------------------------------------

PATCH_CASES: list[tuple[str, list[dict[str, Any]], Mutation, list[str]]] = [
    ("replace", [{"op": "replace", "path": "/telecom/0/value", "value": "555-0199"}], _phone, ["Patient.telecom"]),
    (
        "add",
        [{"op": "add", "path": "/telecom/-", "value": {"system": "sms", "value": "555-0142"}}],
        lambda r: r["telecom"].append({"system": "sms", "value": "555-0142"}),
        ["Patient.telecom"],
    ),
    ("remove", [{"op": "remove", "path": "/address"}], lambda r: r.pop("address"), ["Patient.address"]),
    (
        "test then replace",
        [{"op": "test", "path": "/gender", "value": "female"}, {"op": "replace", "path": "/gender", "value": "other"}],
        lambda r: r.update(gender="other"),
        ["Patient.gender"],
    ),
    (
        "move between elements",
        [{"op": "move", "from": "/name/1", "path": "/name/0"}],
        lambda r: r["name"].reverse(),
        ["Patient.name"],
    ),
    (
        "copy",
        [{"op": "copy", "from": "/name/0/family", "path": "/name/1/family"}],
        lambda r: r["name"][1].update(family="Doe"),
        ["Patient.name"],
    ),
    ("replace with the same value", [{"op": "replace", "path": "/gender", "value": "female"}], lambda r: None, []),
]


@pytest.mark.parametrize(("ops", "mutate", "expected"), [c[1:] for c in PATCH_CASES], ids=[c[0] for c in PATCH_CASES])
def test_patch_applies_to_the_current_resource(
    ops: list[dict[str, Any]], mutate: Mutation, expected: list[str]
) -> None:
    current = patient()
    plan = plan_change(patch(ops), current=current, current_version="3")
    assert without_meta(plan.proposed) == without_meta(patient(mutate))
    assert plan.proposed["meta"] == {"profile": PATIENT["meta"]["profile"], "tag": TAGS}
    assert plan.changed_paths == expected
    assert plan.is_noop is (not expected)
    assert (plan.operation, plan.resource_id) == (Operation.PATCH, "pat-1")
    assert_diff_replays(current, plan)


PATCH_ERRORS: list[tuple[str, list[dict[str, Any]], str, str]] = [
    ("failing test", [{"op": "test", "path": "/gender", "value": "male"}], "patch/0", "conflict"),
    (
        "failing test after a good op",
        [{"op": "remove", "path": "/address"}, {"op": "test", "path": "/birthDate", "value": "1999-01-01"}],
        "patch/1",
        "conflict",
    ),
    (
        "replace a missing element",
        [{"op": "replace", "path": "/maritalStatus", "value": {"text": "x"}}],
        "patch/0",
        "not-found",
    ),
    ("remove past the end", [{"op": "remove", "path": "/telecom/5"}], "patch/0", "not-found"),
    ("add past the end", [{"op": "add", "path": "/telecom/9", "value": {"value": "1"}}], "patch/0", "not-found"),
    ("index into a string", [{"op": "add", "path": "/gender/x", "value": "y"}], "patch/0", "not-found"),
    ("non-numeric index", [{"op": "replace", "path": "/telecom/first/value", "value": "1"}], "patch/0", "not-found"),
    ("move from nowhere", [{"op": "move", "from": "/nothing", "path": "/gender"}], "patch/0", "not-found"),
    ("meta.versionId", [{"op": "replace", "path": "/meta/versionId", "value": "4"}], "patch/0", "forbidden"),
    ("meta.lastUpdated", [{"op": "remove", "path": "/meta/lastUpdated"}], "patch/0", "forbidden"),
    ("move away the version", [{"op": "move", "from": "/meta/versionId", "path": "/gender"}], "patch/0", "forbidden"),
    ("id", [{"op": "replace", "path": "/id", "value": "pat-2"}], "patch/0", "forbidden"),
    ("resourceType", [{"op": "replace", "path": "/resourceType", "value": "Person"}], "patch/0", "forbidden"),
    ("move away the id", [{"op": "move", "from": "/id", "path": "/gender"}], "patch/0", "forbidden"),
    ("the root", [{"op": "replace", "path": "", "value": {"resourceType": "Patient"}}], "patch/0", "forbidden"),
    (
        "second op touches the version",
        [{"op": "replace", "path": "/gender", "value": "male"}, {"op": "remove", "path": "/meta/versionId"}],
        "patch/1",
        "forbidden",
    ),
]


@pytest.mark.parametrize(("ops", "path", "code"), [c[1:] for c in PATCH_ERRORS], ids=[c[0] for c in PATCH_ERRORS])
def test_patch_that_does_not_apply_names_the_operation(ops: list[dict[str, Any]], path: str, code: str) -> None:
    with pytest.raises(PatchApplyError) as caught:
        plan_change(patch(ops), current=patient(), current_version="3")
    error = caught.value
    assert isinstance(error, RequestError) and error.status == 422
    assert [(i.path, i.code) for i in error.issues] == [(path, code)]
    for value in ("male", "1999-01-01", "pat-2", "Person", "female", "1980-05-17"):
        assert value not in str(error) and value not in error.issues[0].message


META_PATCHES: list[tuple[str, list[dict[str, Any]], dict[str, Any], list[str]]] = [
    (
        "adds a label",
        [{"op": "add", "path": "/meta/security", "value": [RESTRICTED]}],
        {"profile": PATIENT["meta"]["profile"], "tag": TAGS, "security": [RESTRICTED]},
        ["Patient.meta.security"],
    ),
    (
        "appends a tag",
        [{"op": "add", "path": "/meta/tag/-", "value": {"code": "x"}}],
        {"profile": PATIENT["meta"]["profile"], "tag": [*TAGS, {"code": "x"}]},
        ["Patient.meta.tag"],
    ),
    ("removes meta", [{"op": "remove", "path": "/meta"}], {}, ["Patient.meta.profile", "Patient.meta.tag"]),
    (
        "replaces meta, version and all",
        [{"op": "replace", "path": "/meta", "value": {"versionId": "x", "tag": TAGS}}],
        {"tag": TAGS},
        ["Patient.meta.profile"],
    ),
    (
        "adds a gateway tag",
        [{"op": "add", "path": "/meta/tag/-", "value": GATEWAY_TAGS[0]}],
        {"profile": PATIENT["meta"]["profile"], "tag": TAGS},
        [],
    ),
]


@pytest.mark.parametrize(("ops", "meta", "expected"), [c[1:] for c in META_PATCHES], ids=[c[0] for c in META_PATCHES])
def test_patch_may_change_meta_elements_under_the_policy(
    ops: list[dict[str, Any]], meta: dict[str, Any], expected: list[str]
) -> None:
    current = patient()
    plan = plan_change(patch(ops), current=current, current_version="3")
    assert plan.proposed.get("meta", {}) == meta
    assert plan.changed_paths == expected
    assert_diff_replays(current, plan)


def test_test_ops_may_read_meta_and_id() -> None:
    ops = [
        {"op": "test", "path": "/id", "value": "pat-1"},
        {"op": "test", "path": "/meta/versionId", "value": "3"},
        {"op": "copy", "from": "/id", "path": "/identifier/0/value"},
    ]
    plan = plan_change(patch(ops), current=patient(), current_version="3")
    assert plan.proposed["identifier"][0]["value"] == "pat-1"
    assert plan.changed_paths == ["Patient.identifier"]


INVALID_PATCHES: list[tuple[str, list[dict[str, Any]], str]] = [
    ("code outside its value set", [{"op": "replace", "path": "/gender", "value": "nonsense"}], "Patient.gender"),
    ("unknown element", [{"op": "add", "path": "/favouriteColour", "value": "blue"}], "Patient.favouriteColour"),
    ("wrong JSON type", [{"op": "replace", "path": "/deceasedBoolean", "value": "yes"}], "Patient.deceasedBoolean"),
    ("two choice types", [{"op": "add", "path": "/deceasedDateTime", "value": "2024-01-01"}], "Patient"),
    ("empty array", [{"op": "remove", "path": "/name/0/given/0"}], "Patient.name[0].given"),
]


@pytest.mark.parametrize(("ops", "path"), [c[1:] for c in INVALID_PATCHES], ids=[c[0] for c in INVALID_PATCHES])
def test_invalid_patched_resource_is_refused_naming_the_element(ops: list[dict[str, Any]], path: str) -> None:
    with pytest.raises(FhirValidationError) as caught:
        plan_change(patch(ops), current=patient(), current_version="3")
    assert path in [i.path for i in caught.value.issues]
    assert caught.value.operation_outcome is not None
    assert caught.value.operation_outcome["resourceType"] == "OperationOutcome"


# --- element paths ------------------------------------------------------------------------------------------------

PATH_CASES: list[tuple[str, str, list[dict[str, Any]], list[str]]] = [
    ("nested pointer", "Patient", [{"op": "replace", "path": "/telecom/0/value"}], ["Patient.telecom"]),
    ("value[x]", "Observation", [{"op": "replace", "path": "/valueQuantity/value"}], ["Observation.value[x]"]),
    ("effective[x]", "Observation", [{"op": "add", "path": "/effectivePeriod"}], ["Observation.effective[x]"]),
    ("primitive twin of a choice", "Observation", [{"op": "add", "path": "/_valueString"}], ["Observation.value[x]"]),
    ("onset[x]", "Condition", [{"op": "add", "path": "/onsetAge"}], ["Condition.onset[x]"]),
    ("abatement[x]", "Condition", [{"op": "remove", "path": "/abatementDateTime"}], ["Condition.abatement[x]"]),
    ("deceased[x]", "Patient", [{"op": "add", "path": "/deceasedDateTime"}], ["Patient.deceased[x]"]),
    ("multipleBirth[x]", "Patient", [{"op": "add", "path": "/multipleBirthInteger"}], ["Patient.multipleBirth[x]"]),
    ("occurrence[x]", "ServiceRequest", [{"op": "add", "path": "/occurrenceTiming"}], ["ServiceRequest.occurrence[x]"]),
    ("performed[x]", "Procedure", [{"op": "add", "path": "/performedPeriod"}], ["Procedure.performed[x]"]),
    (
        "medication[x]",
        "MedicationRequest",
        [{"op": "add", "path": "/medicationReference"}],
        ["MedicationRequest.medication[x]"],
    ),
    ("primitive twin", "Patient", [{"op": "add", "path": "/_birthDate/extension"}], ["Patient.birthDate"]),
    ("escaped pointer", "Basic", [{"op": "add", "path": "/a~1b~0c/x"}], ["Basic.a/b~c"]),
    (
        "move changes both ends",
        "Patient",
        [{"op": "move", "from": "/name/1", "path": "/alias/0"}],
        ["Patient.alias", "Patient.name"],
    ),
    (
        "copy changes only its target",
        "Patient",
        [{"op": "copy", "from": "/name/0", "path": "/contact/0/name"}],
        ["Patient.contact"],
    ),
    ("test changes nothing", "Patient", [{"op": "test", "path": "/gender", "value": "x"}], []),
    (
        "root, server meta and resourceType are left out",
        "Patient",
        [
            {"op": "replace", "path": ""},
            {"op": "replace", "path": "/meta/versionId"},
            {"op": "add", "path": "/meta/_lastUpdated"},
            {"op": "replace", "path": "/resourceType"},
        ],
        [],
    ),
    ("a meta element", "Patient", [{"op": "add", "path": "/meta/security/0"}], ["Patient.meta.security"]),
    ("a meta primitive twin", "Patient", [{"op": "add", "path": "/meta/_source"}], ["Patient.meta.source"]),
    ("meta as a whole", "Patient", [{"op": "remove", "path": "/meta"}], ["Patient.meta"]),
    (
        "sorted and unique",
        "Patient",
        [
            {"op": "replace", "path": "/telecom/1/value"},
            {"op": "add", "path": "/address/0/city"},
            {"op": "remove", "path": "/telecom/0"},
        ],
        ["Patient.address", "Patient.telecom"],
    ),
    ("unknown resource type", "NotAType", [{"op": "add", "path": "/valueQuantity"}], ["NotAType.valueQuantity"]),
]


@pytest.mark.parametrize(
    ("resource_type", "diff", "expected"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES]
)
def test_element_paths(resource_type: str, diff: list[dict[str, Any]], expected: list[str]) -> None:
    assert element_paths(resource_type, diff) == expected


OBSERVATION_CASES: list[tuple[str, Mutation, list[str]]] = [
    ("value", lambda r: r["valueQuantity"].update(value=80), ["Observation.value[x]"]),
    (
        "value type",
        lambda r: (r.pop("valueQuantity"), r.update(valueString="eighty")),
        ["Observation.value[x]"],
    ),
    ("effective", lambda r: r.update(effectiveDateTime="2024-01-03"), ["Observation.effective[x]"]),
    (
        "effective type and status",
        lambda r: (r.pop("effectiveDateTime"), r.update(effectivePeriod={"start": "2024-01-03"}, status="amended")),
        ["Observation.effective[x]", "Observation.status"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in OBSERVATION_CASES], ids=[c[0] for c in OBSERVATION_CASES]
)
def test_update_of_choice_elements_names_the_choice(mutate: Mutation, expected: list[str]) -> None:
    current = copy.deepcopy(OBSERVATION)
    sent = copy.deepcopy(OBSERVATION)
    mutate(sent)
    plan = plan_change(update(sent, base_version="7"), current=current, current_version="7")
    assert plan.changed_paths == expected
    assert_diff_replays(current, plan)


# --- three-way merge ------------------------------------------------------------------------------------------------


def downstream(mutate: Mutation, version: str = "4", **meta: Any) -> dict[str, Any]:
    """The target's current resource: the base changed by someone else, at a new version."""
    return patient(mutate, versionId=version, lastUpdated="2024-02-01T00:00:00Z", **meta)


def test_three_way_disjoint_update_applies_our_change_on_top_of_theirs() -> None:
    base = patient()
    current = downstream(lambda r: r["address"][0].update(city="Shelbyville"))
    plan = plan_change(update(patient(_phone)), current=current, current_version="4", base=base)
    assert plan.merged and plan.downstream_paths == ["Patient.address"]
    assert plan.proposed["telecom"][0]["value"] == "555-0199"  # ours
    assert plan.proposed["address"][0]["city"] == "Shelbyville"  # theirs, kept
    assert plan.changed_paths == ["Patient.telecom"]
    assert plan.diff == [{"op": "replace", "path": "/telecom/0/value", "value": "555-0199"}]
    assert (plan.base_version, plan.current_version) == ("3", "4")
    assert_diff_replays(current, plan)


def test_three_way_update_that_drops_an_element_drops_it_on_current() -> None:
    current = downstream(lambda r: r.update(gender="other"))
    plan = plan_change(
        update(patient(lambda r: r.pop("address"))), current=current, current_version="4", base=patient()
    )
    assert "address" not in plan.proposed and plan.proposed["gender"] == "other"
    assert plan.changed_paths == ["Patient.address"]


def test_three_way_overlap_is_a_conflict_naming_the_elements() -> None:
    current = downstream(lambda r: (r["telecom"][1].update(value="new@example.org"), r.update(gender="other")))
    ours = patient(lambda r: (r["telecom"][0].update(value="555-0199"), r["address"][0].update(city="Ogdenville")))
    with pytest.raises(PlanConflictError) as caught:
        plan_change(update(ours), current=current, current_version="4", base=patient())
    error = caught.value
    assert isinstance(error, ConflictError) and error.status == 409
    assert error.overlap == ["Patient.telecom"]
    assert error.ours == ["Patient.address", "Patient.telecom"]
    assert error.theirs == ["Patient.gender", "Patient.telecom"]
    assert [i.path for i in error.issues] == ["Patient.telecom"]
    assert "Patient.telecom" in str(error) and "555" not in str(error) and "example.org" not in str(error)


def test_three_way_overlap_through_a_choice_element() -> None:
    base = copy.deepcopy(OBSERVATION)
    current = copy.deepcopy(OBSERVATION)
    current.pop("valueQuantity")
    current["valueString"] = "high"
    current["meta"]["versionId"] = "8"
    ours = copy.deepcopy(OBSERVATION)
    ours["valueQuantity"]["value"] = 90
    with pytest.raises(PlanConflictError) as caught:
        plan_change(update(ours, base_version="7"), current=current, current_version="8", base=base)
    assert caught.value.overlap == ["Observation.value[x]"]


def test_three_way_same_change_on_both_sides_is_not_a_conflict() -> None:
    current = downstream(_phone)  # e.g. our own earlier write whose response was lost
    plan = plan_change(update(patient(_phone)), current=current, current_version="4", base=patient())
    assert plan.merged and plan.is_noop
    assert plan.downstream_paths == ["Patient.telecom"]
    assert plan.proposed["telecom"] == current["telecom"]


def test_three_way_patch_is_relative_to_the_base() -> None:
    base = patient()
    current = downstream(lambda r: (r.update(gender="other"), r["telecom"].insert(0, {"system": "fax", "value": "1"})))
    ops = [
        {"op": "test", "path": "/gender", "value": "female"},  # true of what the caller read, no longer of current
        {"op": "replace", "path": "/name/1/given/0", "value": "Janie"},
    ]
    plan = plan_change(patch(ops), current=current, current_version="4", base=base)
    assert plan.merged and plan.downstream_paths == ["Patient.gender", "Patient.telecom"]
    assert plan.proposed["name"][1]["given"] == ["Janie"]
    assert plan.proposed["gender"] == "other" and plan.proposed["telecom"][0]["system"] == "fax"
    assert plan.changed_paths == ["Patient.name"]
    assert_diff_replays(current, plan)


def test_three_way_patch_overlapping_by_index_is_a_conflict() -> None:
    current = downstream(lambda r: r["telecom"].insert(0, {"system": "fax", "value": "1"}))
    ops = [{"op": "replace", "path": "/telecom/0/value", "value": "555-0199"}]  # index 0 of the base, not of current
    with pytest.raises(PlanConflictError) as caught:
        plan_change(patch(ops), current=current, current_version="4", base=patient())
    assert caught.value.overlap == ["Patient.telecom"]


def test_three_way_patch_failing_on_the_base_names_the_operation() -> None:
    ops = [{"op": "test", "path": "/gender", "value": "other"}, {"op": "remove", "path": "/address"}]
    current = downstream(lambda r: r.update(gender="other"))  # the test would pass on current, but not on the base
    with pytest.raises(PatchApplyError) as caught:
        plan_change(patch(ops), current=current, current_version="4", base=patient())
    assert [i.path for i in caught.value.issues] == ["patch/0"]


def test_three_way_merge_result_is_validated() -> None:
    current = downstream(lambda r: r["address"][0].update(city="Shelbyville"))
    ours = patient(lambda r: r.update(gender="nonsense"))
    with pytest.raises(FhirValidationError) as caught:
        plan_change(update(ours), current=current, current_version="4", base=patient())
    assert [i.path for i in caught.value.issues] == ["Patient.gender"]
    assert "merged" in str(caught.value)


def test_three_way_label_goes_on_top_of_other_changes() -> None:
    current = downstream(lambda r: r["address"][0].update(city="Shelbyville"), tag=[*TAGS, *GATEWAY_TAGS])
    plan = plan_change(update(patient(security=[RESTRICTED])), current=current, current_version="4", base=patient())
    assert plan.merged and plan.downstream_paths == ["Patient.address"]  # the gateway's tags are nobody's change
    assert plan.changed_paths == ["Patient.meta.security"]
    assert plan.proposed["meta"] == {"profile": PATIENT["meta"]["profile"], "tag": TAGS, "security": [RESTRICTED]}
    assert plan.proposed["address"][0]["city"] == "Shelbyville"
    assert_diff_replays(current, plan)


def test_three_way_tags_changed_on_both_sides_conflict() -> None:
    current = downstream(lambda r: None, tag=[{"code": "theirs"}])
    with pytest.raises(PlanConflictError) as caught:
        plan_change(update(patient(tag=[{"code": "ours"}])), current=current, current_version="4", base=patient())
    assert caught.value.overlap == ["Patient.meta.tag"]


def test_three_way_base_of_another_resource_is_refused() -> None:
    with pytest.raises(RequestError):
        plan_change(
            update(patient(_phone)),
            current=downstream(lambda r: None),
            current_version="4",
            base=patient(lambda r: r.update(id="pat-2")),
        )


def test_changed_target_without_vread_is_a_conflict() -> None:
    with pytest.raises(PlanConflictError) as caught:
        plan_change(update(patient(_phone)), current=downstream(lambda r: None), current_version="4", base=None)
    error = caught.value
    assert (error.ours, error.theirs, error.overlap) == ([], [], [])
    assert "cannot return that version" in error.detail


def test_without_base_version_the_plan_is_two_way() -> None:
    current = downstream(lambda r: r.update(gender="other"))
    plan = plan_change(update(patient(_phone), base_version=None), current=current, current_version="4")
    assert not plan.merged and plan.base_version is None
    assert plan.changed_paths == ["Patient.gender", "Patient.telecom"]  # the caller's full resource wins


# --- the patch a write sends -----------------------------------------------------------------------------------


def test_element_patch_sets_each_changed_element_whole() -> None:
    current = patient()
    ops = [
        {"op": "move", "from": "/telecom/0", "path": "/telecom/1"},
        {"op": "remove", "path": "/address"},
        {"op": "add", "path": "/meta/security", "value": [RESTRICTED]},
    ]
    plan = plan_change(patch(ops), current=current, current_version="3")
    assert plan.element_patch() == [
        {"op": "remove", "path": "/address"},
        {"op": "add", "path": "/telecom", "value": plan.proposed["telecom"]},
    ]
    assert jsonpatch.apply_patch(without_meta(current), plan.element_patch()) == without_meta(plan.proposed)


def test_element_patch_of_a_plan_without_change_is_empty() -> None:
    plan = plan_change(
        patch([{"op": "test", "path": "/gender", "value": "female"}]), current=patient(), current_version="3"
    )
    assert plan.element_patch() == []


# --- versions ---------------------------------------------------------------------------------------------------

UUID_A = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
UUID_B = "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"

VERSION_CASES: list[tuple[str, str, str | None, str | None, bool]] = [
    ("same uuid", UUID_A, UUID_A, UUID_A, False),
    ("other uuid", UUID_A, UUID_B, UUID_B, True),
    ("weak etag of the same uuid", UUID_A, f'W/"{UUID_A}"', UUID_A, False),
    ("strings, not numbers", "3", "03", "03", True),
    ("current version from meta", "3", None, "3", False),
]


@pytest.mark.parametrize(
    ("base_version", "current_version", "recorded", "three_way"),
    [c[1:] for c in VERSION_CASES],
    ids=[c[0] for c in VERSION_CASES],
)
def test_versions_are_opaque_strings(
    base_version: str, current_version: str | None, recorded: str | None, three_way: bool
) -> None:
    base = patient()
    current = downstream(lambda r: r.update(gender="other"), version=recorded or "3")
    if current_version is None:
        current["meta"]["versionId"] = base_version
    plan = plan_change(
        update(patient(_phone), base_version=base_version), current=current, current_version=current_version, base=base
    )
    assert plan.current_version == recorded
    assert plan.base_version == base_version
    assert plan.merged is three_way
    assert plan.changed_paths == (["Patient.telecom"] if three_way else ["Patient.gender", "Patient.telecom"])


# --- inputs are never changed, and the plan shares nothing with them ---------------------------------------------

INPUT_CASES: list[tuple[str, ChangeRequest, bool]] = [
    ("create", ChangeRequest(target="ehr", operation=Operation.CREATE, resource=patient(_phone)), False),
    ("update", update(patient(_phone)), False),
    ("patch", patch([{"op": "add", "path": "/telecom/-", "value": {"system": "sms", "value": "1"}}]), False),
    ("three-way update", update(patient(_phone)), True),
    ("three-way patch", patch([{"op": "add", "path": "/name/-", "value": {"family": "Roe", "given": ["J"]}}]), True),
]


@pytest.mark.parametrize(("request_", "three_way"), [c[1:] for c in INPUT_CASES], ids=[c[0] for c in INPUT_CASES])
def test_inputs_are_never_mutated_or_shared(request_: ChangeRequest, three_way: bool) -> None:
    is_create = request_.operation is Operation.CREATE
    base = patient()
    current = None if is_create else (downstream(lambda r: r.update(gender="other")) if three_way else patient())
    before = json.dumps([request_.model_dump(mode="json"), current, base], sort_keys=True)
    plan = plan_change(
        request_,
        current=current,
        current_version=None if is_create else ("4" if three_way else "3"),
        base=base if three_way else None,
    )
    assert plan.merged is three_way
    _scribble(plan.proposed)
    _scribble(plan.diff)
    assert json.dumps([request_.model_dump(mode="json"), current, base], sort_keys=True) == before


def _scribble(node: Any) -> None:
    """Change every container in place, so any sharing with the inputs would show."""
    if isinstance(node, dict):
        for value in list(node.values()):
            _scribble(value)
        node["scribbled"] = True
    elif isinstance(node, list):
        for value in list(node):
            _scribble(value)
        node.append("scribbled")


# --- misuse -------------------------------------------------------------------------------------------------------


def test_create_with_a_current_resource_is_a_programming_error() -> None:
    request = ChangeRequest(target="ehr", operation=Operation.CREATE, resource=patient())
    with pytest.raises(ValueError, match="create"):
        plan_change(request, current=patient(), current_version="3")


def test_update_without_a_current_resource_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="current"):
        plan_change(update(patient()), current=None, current_version=None)
