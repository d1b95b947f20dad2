"""FHIR R4 validation: valid resources pass; every refusal names the element, once, with a FHIR issue-type code."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from shared.core.errors import FhirValidationError, Issue
from shared.core.fhir_validation import (
    MAX_ISSUES,
    R4_RESOURCE_TYPES,
    SUPPORTED_BINDING_TYPES,
    narrative_problems,
    operation_outcome,
    reference_problem,
    validate_resource,
    validation_issues,
)
from shared.core.fhir_validation.bindings import CODE_BINDINGS

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"


def div(inner: str) -> str:
    return f"<div {XHTML}>{inner}</div>"


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "pat-1.a",
    "meta": {"versionId": "3", "lastUpdated": "2024-01-02T03:04:05.123Z", "profile": ["http://example.org/p"]},
    "text": {"status": "generated", "div": div("<p>Jane <b>Doe</b>, born 1980</p>")},
    "extension": [{"url": "http://example.org/ext/nickname", "valueString": "JJ"}],
    "identifier": [
        {"use": "official", "system": "http://hospital.example.org/mrn", "value": "MRN-12345"},
        {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789"},
    ],
    "active": True,
    "name": [
        {"use": "official", "family": "Doe", "given": ["Jane", "Q"], "prefix": ["Dr."]},
        {"use": "nickname", "given": ["JJ"]},
    ],
    "telecom": [
        {"system": "phone", "value": "555-0100", "use": "mobile", "rank": 1},
        {"system": "email", "value": "jane@example.org", "use": "home"},
    ],
    "gender": "female",
    "birthDate": "1980-05-17",
    "_birthDate": {"extension": [{"url": "http://example.org/ext/accuracy", "valueCode": "exact"}]},
    "deceasedBoolean": False,
    "address": [
        {
            "use": "home",
            "type": "both",
            "line": ["1 Main St", "Apt 2"],
            "city": "Springfield",
            "state": "IL",
            "postalCode": "62701",
            "country": "US",
            "period": {"start": "2010-01-01"},
        }
    ],
    "maritalStatus": {"coding": [{"system": TERMINOLOGY + "v3-MaritalStatus", "code": "M"}]},
    "multipleBirthInteger": 1,
    "contact": [
        {
            "relationship": [{"coding": [{"system": TERMINOLOGY + "v2-0131", "code": "N"}]}],
            "name": {"family": "Doe", "given": ["John"]},
            "telecom": [{"system": "phone", "value": "555-0101", "use": "work"}],
            "gender": "male",
        }
    ],
    "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US"}]}, "preferred": True}],
    "generalPractitioner": [{"reference": "Practitioner/prac-7", "display": "Dr. Who"}],
    "managingOrganization": {"reference": "https://fhir.example.org/r4/Organization/org-1/_history/2"},
    "link": [{"other": {"reference": "Patient/pat-0"}, "type": "replaces"}],
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "hr-1",
    "status": "final",
    "category": [
        {"coding": [{"system": TERMINOLOGY + "observation-category", "code": "vital-signs", "display": "Vital Signs"}]}
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "HR"},
    "subject": {"reference": "Patient/pat-1.a"},
    "encounter": {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"},
    "effectiveDateTime": "2024-01-02T03:04:05+01:00",
    "issued": "2024-01-02T03:05:00Z",
    "performer": [{"reference": "Practitioner/prac-7"}],
    "valueQuantity": {"value": 72.5, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
    "interpretation": [{"coding": [{"system": TERMINOLOGY + "v3-ObservationInterpretation", "code": "N"}]}],
    "note": [{"text": "Resting.\nTaken twice.\tOK"}],
    "referenceRange": [
        {"low": {"value": 60, "unit": "/min"}, "high": {"value": 100, "unit": "/min"}, "text": "normal"}
    ],
}

BLOOD_PRESSURE: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "amended",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Patient/pat-1.a"},
    "effectivePeriod": {"start": "2024-01-02", "end": "2024-01-02T10:00:00Z"},
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "comparator": "<", "unit": "mmHg"},
        },
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueInteger": 80},
    ],
}

ALLERGY: dict[str, Any] = {
    "resourceType": "AllergyIntolerance",
    "id": "alg-1",
    "clinicalStatus": {"coding": [{"system": TERMINOLOGY + "allergyintolerance-clinical", "code": "active"}]},
    "verificationStatus": {
        "coding": [{"system": TERMINOLOGY + "allergyintolerance-verification", "code": "confirmed"}]
    },
    "type": "allergy",
    "category": ["food", "medication"],
    "criticality": "high",
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "227493005", "display": "Cashew nuts"}]},
    "patient": {"reference": "Patient/pat-1.a"},
    "onsetDateTime": "2004",
    "recordedDate": "2014-10-09T14:58:00+11:00",
    "reaction": [
        {
            "manifestation": [{"coding": [{"system": "http://snomed.info/sct", "code": "39579001"}]}],
            "severity": "severe",
        }
    ],
}

CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "id": "cond-1",
    "clinicalStatus": {"coding": [{"system": TERMINOLOGY + "condition-clinical", "code": "remission"}]},
    "verificationStatus": {"coding": [{"system": TERMINOLOGY + "condition-ver-status", "code": "differential"}]},
    "category": [{"coding": [{"system": TERMINOLOGY + "condition-category", "code": "problem-list-item"}]}],
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}], "text": "Diabetes"},
    "subject": {"reference": "Patient/pat-1.a"},
    "onsetAge": {"value": 52, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
    "recordedDate": "2020-03-04",
}

DOCUMENT_REFERENCE: dict[str, Any] = {
    "resourceType": "DocumentReference",
    "id": "doc-1",
    "status": "current",
    "docStatus": "final",
    "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
    "subject": {"reference": "Patient/pat-1.a"},
    "date": "2024-01-02T03:04:05Z",
    "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/doc-0"}}],
    "content": [
        {
            "attachment": {
                "contentType": "text/plain",
                "language": "en",
                "data": "SGVsbG8sIHdvcmxkIQ==",
                "title": "Note",
                "creation": "2024-01-02",
                "size": 13,
            }
        },
        {"attachment": {"contentType": "application/pdf", "url": "https://docs.example.org/Binary/b1"}},
    ],
}

CONTAINED: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "preliminary",
    "code": {"text": "Glucose"},
    "contained": [
        {
            "resourceType": "Patient",
            "id": "p1",
            "name": [{"family": "Roe"}],
            "managingOrganization": {"reference": "#"},
        },
        {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "House"}]},
    ],
    "subject": {"reference": "#p1"},
    "performer": [{"reference": "#pr1"}],
    "valueString": "High",
}

VALID = {
    "patient": PATIENT,
    "observation": OBSERVATION,
    "blood-pressure": BLOOD_PRESSURE,
    "allergy": ALLERGY,
    "condition": CONDITION,
    "document-reference": DOCUMENT_REFERENCE,
    "contained": CONTAINED,
    "minimal-patient": {"resourceType": "Patient"},
    "primitive-array-with-extension-twin": {
        "resourceType": "Patient",
        "name": [
            {
                "given": ["Ann", None, "Lee"],
                "_given": [None, {"extension": [{"url": "http://example.org/x", "valueString": "middle"}]}, None],
            }
        ],
    },
    "status-only-as-extension": {
        "resourceType": "Observation",
        "_status": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                    "valueCode": "unknown",
                }
            ]
        },
        "code": {"text": "x"},
    },
    "rich-narrative": {
        "resourceType": "Patient",
        "text": {
            "status": "additional",
            "div": div(
                '<table class="grid" border="1"><tr><th colspan="2">A</th></tr><tr><td style="color:red">1</td>'
                '<td><a href="https://example.org/x?a=1&amp;b=2">link</a></td></tr></table>'
                '<ul><li xml:lang="en">&lt;one&gt; &#160;</li></ul><img src="#photo" alt="p"/>'
                '<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline"/>'
            ),
        },
    },
    "bundle": {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "resource": PATIENT},
            {"fullUrl": "https://fhir.example.org/Observation/hr-1", "resource": OBSERVATION},
        ],
    },
    "decimal-as-int-and-exponent": {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 1e-3},
        "referenceRange": [{"low": {"value": 0}}],
    },
}


def paths(issues: list[Issue]) -> list[str]:
    return [issue.path for issue in issues]


def assert_issue(resource: object, path: str, code: str | None = None, **kwargs: Any) -> list[Issue]:
    issues = validation_issues(resource, **kwargs)
    matching = [issue for issue in issues if issue.path == path]
    assert matching, f"no issue at {path}; got {[(i.path, i.code, i.message) for i in issues]}"
    if code is not None:
        assert code in {issue.code for issue in matching}, [(i.path, i.code, i.message) for i in matching]
    for issue in issues:
        assert issue.message and issue.code and issue.path
    return issues


def changed(base: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    resource = copy.deepcopy(base)
    change(resource)
    return resource


# --- valid resources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", list(VALID.values()), ids=list(VALID))
def test_valid_resources_pass(resource: dict[str, Any]) -> None:
    before = copy.deepcopy(resource)
    assert validation_issues(resource) == []
    assert validation_issues(resource, expected_type=resource["resourceType"]) == []
    validate_resource(resource, expected_type=resource["resourceType"])
    assert resource == before  # never modified


def test_control_whitespace_is_allowed_in_strings() -> None:
    note = {"resourceType": "Patient", "name": [{"text": "line 1\r\nline 2\tend"}]}
    assert validation_issues(note) == []


# --- the input itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 42, "Patient", ["Patient"], b"{}", 1.5, True], ids=repr)
def test_non_object_input(value: object) -> None:
    issues = validation_issues(value, expected_type="Patient")
    assert [(i.path, i.code) for i in issues] == [("Patient", "structure")]
    assert paths(validation_issues(value)) == ["Resource"]


@pytest.mark.parametrize(
    "resource", [{}, {"id": "x"}, {"resourceType": 5}, {"resourceType": ""}, {"resourceType": None}]
)
def test_missing_or_non_string_resource_type(resource: dict[str, Any]) -> None:
    issues = validation_issues(resource)
    assert [(i.path, i.code) for i in issues] == [("Resource.resourceType", "required")]


def test_resource_type_must_match_expected_type() -> None:
    issues = validation_issues(OBSERVATION, expected_type="Patient")
    assert [(i.path, i.code) for i in issues] == [("Patient.resourceType", "invalid")]
    assert "Patient" in issues[0].message


@pytest.mark.parametrize(
    ("resource_type", "path"),
    [
        ("Nope", "Resource.resourceType"),
        ("patient", "Resource.resourceType"),
        ("Patient<script>", "Resource.resourceType"),
        ("HumanName", "Resource.resourceType"),  # a data type, not a resource
        ("DomainResource", "Resource.resourceType"),  # abstract
        ("SubscriptionTopic", "SubscriptionTopic.resourceType"),  # R4B only
        ("MedicinalProductDefinition", "MedicinalProductDefinition.resourceType"),  # R4B only
        ("MedicinalProduct", "MedicinalProduct.resourceType"),  # R4, absent from R4B
        ("Evidence", "Evidence.resourceType"),  # rebuilt in R4B
    ],
)
def test_unknown_or_unsupported_resource_types(resource_type: str, path: str) -> None:
    issues = validation_issues({"resourceType": resource_type})
    assert [(i.path, i.code) for i in issues] == [(path, "not-supported")]


def test_r4_resource_type_list_has_all_146_types() -> None:
    assert len(R4_RESOURCE_TYPES) == 146
    assert {"Patient", "Observation", "Bundle", "Binary", "Parameters", "VisionPrescription"} <= R4_RESOURCE_TYPES


# --- JSON types and unknown elements ------------------------------------------------------------------------------

WRONG_TYPES: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], object], str]] = [
    ("name-not-array", PATIENT, lambda r: r.update(name={"family": "Doe"}), "Patient.name"),
    ("family-number", PATIENT, lambda r: r["name"][0].update(family=5), "Patient.name[0].family"),
    ("given-not-array", PATIENT, lambda r: r["name"][0].update(given="Jane"), "Patient.name[0].given"),
    ("active-string", PATIENT, lambda r: r.update(active="true"), "Patient.active"),
    ("active-int", PATIENT, lambda r: r.update(active=1), "Patient.active"),
    ("integer-string", PATIENT, lambda r: r.update(multipleBirthInteger="2"), "Patient.multipleBirthInteger"),
    ("integer-float", PATIENT, lambda r: r.update(multipleBirthInteger=2.0), "Patient.multipleBirthInteger"),
    ("integer-bool", PATIENT, lambda r: r.update(multipleBirthInteger=True), "Patient.multipleBirthInteger"),
    ("code-number", PATIENT, lambda r: r["telecom"][0].update(system=5), "Patient.telecom[0].system"),
    ("positive-int-string", PATIENT, lambda r: r["telecom"][0].update(rank="1"), "Patient.telecom[0].rank"),
    ("positive-int-zero", PATIENT, lambda r: r["telecom"][0].update(rank=0), "Patient.telecom[0].rank"),
    ("date-number", PATIENT, lambda r: r.update(birthDate=19800517), "Patient.birthDate"),
    ("date-invalid", PATIENT, lambda r: r.update(birthDate="1980-13-01"), "Patient.birthDate"),
    ("date-not-a-day", PATIENT, lambda r: r.update(birthDate="1980-02-30"), "Patient.birthDate"),
    ("instant-invalid", PATIENT, lambda r: r["meta"].update(lastUpdated="yesterday"), "Patient.meta.lastUpdated"),
    (
        "object-as-string",
        PATIENT,
        lambda r: r.update(managingOrganization="Organization/1"),
        "Patient.managingOrganization",
    ),
    (
        "object-as-json-string",  # fhir.resources parses a string as JSON here and accepts it
        PATIENT,
        lambda r: r.update(managingOrganization='{"reference": "javascript:alert(1)"}'),
        "Patient.managingOrganization",
    ),
    ("object-as-array", PATIENT, lambda r: r.update(maritalStatus=[{"text": "M"}]), "Patient.maritalStatus"),
    ("array-item-string", PATIENT, lambda r: r.update(address=["1 Main St"]), "Patient.address[0]"),
    ("decimal-string", OBSERVATION, lambda r: r["valueQuantity"].update(value="72"), "Observation.valueQuantity.value"),
    ("decimal-bool", OBSERVATION, lambda r: r["valueQuantity"].update(value=True), "Observation.valueQuantity.value"),
    ("value-integer-float", OBSERVATION, lambda r: r.update(valueInteger=1.5), "Observation.valueInteger"),
    (
        "integer-overflow",
        BLOOD_PRESSURE,
        lambda r: r["component"][1].update(valueInteger=2**31),
        "Observation.component[1].valueInteger",
    ),
    (
        "datetime-invalid",
        OBSERVATION,
        lambda r: r.update(effectiveDateTime="2024-01-02T25:00:00Z"),
        "Observation.effectiveDateTime",
    ),
    (
        "unsigned-int-string",
        DOCUMENT_REFERENCE,
        lambda r: r["content"][0]["attachment"].update(size="13"),
        "DocumentReference.content[0].attachment.size",
    ),
    (
        "base64-invalid",
        DOCUMENT_REFERENCE,
        lambda r: r["content"][0]["attachment"].update(data="not base64!"),
        "DocumentReference.content[0].attachment.data",
    ),
    (
        "uri-with-space",
        PATIENT,
        lambda r: r["identifier"][0].update(system="http://x y"),
        "Patient.identifier[0].system",
    ),
    ("contained-as-string", CONTAINED, lambda r: r["contained"].append("{}"), "Observation.contained[2]"),
]


@pytest.mark.parametrize(
    ("base", "change", "path"), [case[1:] for case in WRONG_TYPES], ids=[case[0] for case in WRONG_TYPES]
)
def test_wrong_types_name_the_element(
    base: dict[str, Any], change: Callable[[dict[str, Any]], object], path: str
) -> None:
    assert_issue(changed(base, change), path)


@pytest.mark.parametrize(
    ("base", "key", "path"),
    [
        (PATIENT, "foo", "Patient.foo"),
        (OBSERVATION, "triggeredBy", "Observation.triggeredBy"),  # an R5 element
        (OBSERVATION, "instantiatesCanonical", "Observation.instantiatesCanonical"),  # R5
        (PATIENT, "gender__ext", "Patient.gender__ext"),  # the python name fhir.resources accepts
        (PATIENT, "fhir_comments", "Patient.fhir_comments"),
        (PATIENT, "resource_type", "Patient.resource_type"),
        (CONDITION, "class_", "Condition.class_"),
        (CONDITION, "_foo", "Condition._foo"),
    ],
)
def test_unknown_elements_are_refused_once(base: dict[str, Any], key: str, path: str) -> None:
    issues = assert_issue(changed(base, lambda r: r.update({key: "x"})), path, "structure")
    assert paths(issues).count(path) == 1
    assert len(issues) == 1


def test_unknown_elements_in_nested_and_backbone_elements() -> None:
    resource = changed(PATIENT, lambda r: r["contact"][0].update(foo=1))
    resource["telecom"][1]["period"] = {"start": "2020", "foo": 1}
    resource["_birthDate"]["extension"][0]["valueFoo"] = 1
    issues = validation_issues(resource)
    assert {
        "Patient.contact[0].foo",
        "Patient.telecom[1].period.foo",
        "Patient._birthDate.extension[0].valueFoo",
    } <= set(paths(issues))


def test_python_alias_of_a_required_element_is_not_accepted() -> None:
    encounter = {"resourceType": "Encounter", "status": "planned", "class_": {"code": "AMB"}}
    issues = validation_issues(encounter)
    assert {("Encounter.class_", "structure"), ("Encounter.class", "required")} <= {(i.path, i.code) for i in issues}


def test_invalid_element_names_do_not_leak_into_paths() -> None:
    issues = validation_issues({"resourceType": "Patient", "a b\x00<script>": 1})
    assert [(i.path, i.code) for i in issues] == [("Patient", "structure")]


# --- null, empty, arrays ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda r: r.update(gender=None), "Patient.gender"),
        (lambda r: r.update(address=[]), "Patient.address"),
        (lambda r: r.update(maritalStatus={}), "Patient.maritalStatus"),
        (lambda r: r["name"].append({}), "Patient.name[2]"),
        (lambda r: r["name"].append(None), "Patient.name[2]"),
        (lambda r: r.update(gender=""), "Patient.gender"),
        (lambda r: r["name"][0].update(given=["Jane", None]), "Patient.name[0].given[1]"),
        (lambda r: r["name"][0].update(given=["Jane", None], _given=[None, None]), "Patient.name[0]._given[1]"),
        (lambda r: r["name"][0].update(_given=[{"id": "a"}]), "Patient.name[0]._given"),
    ],
    ids=[
        "null",
        "empty-array",
        "empty-object",
        "empty-object-in-array",
        "null-in-array",
        "empty-string",
        "null-without-twin",
        "twin-all-null",
        "twin-length",
    ],
)
def test_null_and_empty_values(change: Callable[[dict[str, Any]], object], path: str) -> None:
    assert_issue(changed(PATIENT, change), path, "structure" if "gender" not in path else None)


def test_choice_type_twice() -> None:
    issues = assert_issue(changed(PATIENT, lambda r: r.update(deceasedDateTime="2020")), "Patient", "structure")
    assert "deceased[x]" in issues[0].message


# --- required elements (fhir.resources, plus what it skips once something else failed) ------------------------------


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        ({"resourceType": "Observation", "status": "final"}, "Observation.code"),
        ({"resourceType": "Observation", "code": {"text": "x"}}, "Observation.status"),
        ({"resourceType": "Observation", "status": None, "code": {"text": "x"}}, "Observation.status"),
        ({"resourceType": "DocumentReference", "status": "current"}, "DocumentReference.content"),
        (
            {"resourceType": "DocumentReference", "content": [{"attachment": {"url": "http://x.org/a"}}]},
            "DocumentReference.status",
        ),
        (
            {"resourceType": "DocumentReference", "status": "current", "content": [{"format": {"code": "x"}}]},
            "DocumentReference.content[0].attachment",
        ),
        ({"resourceType": "AllergyIntolerance"}, "AllergyIntolerance.patient"),
        ({"resourceType": "Condition"}, "Condition.subject"),
        ({"resourceType": "Patient", "link": [{"type": "seealso"}]}, "Patient.link[0].other"),
        ({"resourceType": "Patient", "link": [{"other": {"reference": "Patient/2"}}]}, "Patient.link[0].type"),
        ({"resourceType": "Patient", "extension": [{"valueString": "x"}]}, "Patient.extension[0].url"),
        ({"resourceType": "Patient", "text": {"div": div("x")}}, "Patient.text.status"),
        ({"resourceType": "Patient", "text": {"status": "generated"}}, "Patient.text.div"),
    ],
)
def test_required_elements(resource: dict[str, Any], path: str) -> None:
    assert_issue(resource, path)


def test_all_missing_required_elements_are_reported_together() -> None:
    # fhir.resources only checks required primitives (status) once everything else passed; we report both.
    assert {"Observation.code", "Observation.status"} <= set(paths(validation_issues({"resourceType": "Observation"})))


# --- ids ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id", ["a" * 65, "a b", "a/b", "a_b", "ä", "a:b", "", "../x", "x\n"], ids=lambda v: repr(v)[:20]
)
def test_bad_resource_ids(bad_id: str) -> None:
    assert_issue(changed(PATIENT, lambda r: r.update(id=bad_id)), "Patient.id", "value")


def test_id_length_64_is_fine() -> None:
    assert validation_issues({"resourceType": "Patient", "id": "A-." + "a" * 61}) == []


def test_bad_contained_id_and_id_type() -> None:
    resource = changed(CONTAINED, lambda r: r["contained"][1].update(id="x" * 65))
    assert_issue(resource, "Observation.contained[1].id", "value")
    assert_issue(changed(PATIENT, lambda r: r.update(id=12)), "Patient.id", "structure")


def test_element_ids_are_strings_not_resource_ids() -> None:
    assert validation_issues({"resourceType": "Patient", "name": [{"id": "any string / here", "family": "X"}]}) == []


# --- code bindings ---------------------------------------------------------------------------------------------------

BadCode = tuple[dict[str, Any], Callable[[dict[str, Any]], object], str]


def bad_status_code(base: dict[str, Any], element: str, code: str) -> BadCode:
    """The case of ``base`` whose status CodeableConcept ``element`` has ``code`` in its first coding."""
    path = f"{base['resourceType']}.{element}.coding[0].code"
    return base, lambda r: r[element]["coding"][0].update(code=code), path


BAD_CODES: list[BadCode] = [
    (PATIENT, lambda r: r.update(gender="robot"), "Patient.gender"),
    (PATIENT, lambda r: r.update(gender="Male"), "Patient.gender"),
    (PATIENT, lambda r: r.update(gender=" male"), "Patient.gender"),
    (PATIENT, lambda r: r["telecom"][0].update(system="pigeon"), "Patient.telecom[0].system"),
    (PATIENT, lambda r: r["telecom"][1].update(use="cell"), "Patient.telecom[1].use"),
    (PATIENT, lambda r: r["contact"][0]["telecom"][0].update(use="cell"), "Patient.contact[0].telecom[0].use"),
    (PATIENT, lambda r: r["contact"][0].update(gender="robot"), "Patient.contact[0].gender"),
    (PATIENT, lambda r: r["name"][1].update(use="alias"), "Patient.name[1].use"),
    (PATIENT, lambda r: r["address"][0].update(use="vacation"), "Patient.address[0].use"),
    (PATIENT, lambda r: r["address"][0].update(type="virtual"), "Patient.address[0].type"),
    (PATIENT, lambda r: r["identifier"][0].update(use="primary"), "Patient.identifier[0].use"),
    (PATIENT, lambda r: r["link"][0].update(type="same"), "Patient.link[0].type"),
    (PATIENT, lambda r: r["text"].update(status="robot"), "Patient.text.status"),
    (OBSERVATION, lambda r: r.update(status="bogus"), "Observation.status"),
    (OBSERVATION, lambda r: r["valueQuantity"].update(comparator="~"), "Observation.valueQuantity.comparator"),
    (
        BLOOD_PRESSURE,
        lambda r: r["component"][0]["valueQuantity"].update(comparator="=="),
        "Observation.component[0].valueQuantity.comparator",
    ),
    (CONDITION, lambda r: r["onsetAge"].update(comparator="about"), "Condition.onsetAge.comparator"),
    (ALLERGY, lambda r: r.update(type="sensitivity"), "AllergyIntolerance.type"),
    (ALLERGY, lambda r: r.update(category=["food", "pollen"]), "AllergyIntolerance.category[1]"),
    (ALLERGY, lambda r: r.update(criticality="medium"), "AllergyIntolerance.criticality"),
    (ALLERGY, lambda r: r["reaction"][0].update(severity="fatal"), "AllergyIntolerance.reaction[0].severity"),
    bad_status_code(ALLERGY, "clinicalStatus", "remission"),
    bad_status_code(ALLERGY, "verificationStatus", "provisional"),
    (ALLERGY, lambda r: r.update(clinicalStatus={"text": "active"}), "AllergyIntolerance.clinicalStatus"),
    bad_status_code(CONDITION, "clinicalStatus", "cured"),
    bad_status_code(CONDITION, "verificationStatus", "maybe"),
    (
        CONDITION,
        lambda r: r["clinicalStatus"]["coding"][0].update(system="http://other.org"),
        "Condition.clinicalStatus",
    ),
    (DOCUMENT_REFERENCE, lambda r: r.update(status="final"), "DocumentReference.status"),
    (DOCUMENT_REFERENCE, lambda r: r.update(docStatus="draft"), "DocumentReference.docStatus"),
    (DOCUMENT_REFERENCE, lambda r: r["relatesTo"][0].update(code="copies"), "DocumentReference.relatesTo[0].code"),
    (
        {"resourceType": "Practitioner"},  # data-type bindings apply in every resource type
        lambda r: r.update(telecom=[{"system": "telex", "value": "1"}]),
        "Practitioner.telecom[0].system",
    ),
    (
        {"resourceType": "Bundle", "type": "collection"},
        lambda r: r.update(entry=[{"resource": {"resourceType": "Patient", "gender": "robot"}}]),
        "Bundle.entry[0].resource.gender",
    ),
]


@pytest.mark.parametrize(("base", "change", "path"), BAD_CODES, ids=[case[2] for case in BAD_CODES])
def test_required_bindings(base: dict[str, Any], change: Callable[[dict[str, Any]], object], path: str) -> None:
    issues = assert_issue(changed(base, change), path, "code-invalid")
    assert paths(issues).count(path) == 1  # not also reported by fhir.resources (" male" fails its code pattern)


def test_codings_from_other_systems_are_left_alone() -> None:
    condition = changed(
        CONDITION, lambda r: r["clinicalStatus"]["coding"].append({"system": "http://local.org/cs", "code": "whatever"})
    )
    assert validation_issues(condition) == []


def test_supported_binding_types() -> None:
    assert {"Patient", "Observation", "AllergyIntolerance", "Condition", "DocumentReference"} <= SUPPORTED_BINDING_TYPES
    assert SUPPORTED_BINDING_TYPES <= R4_RESOURCE_TYPES


def test_binding_table_agrees_with_fhir_resources_enum_values() -> None:
    from fhir.resources.R4B import get_fhir_model_class

    for type_name, elements in CODE_BINDINGS.items():
        model = get_fhir_model_class(type_name)
        for element, (_, codes) in elements.items():
            extra = model.model_fields[element].json_schema_extra
            enum = extra.get("enum_values") if isinstance(extra, dict) else None
            if isinstance(enum, list) and "+" not in enum:  # R4B truncates long value sets with "+"
                assert set(enum) == codes, (type_name, element)


# --- references ----------------------------------------------------------------------------------------------------

BAD_REFERENCES = [
    ("javascript:alert(1)", "security"),
    ("JavaScript:alert(1)", "security"),
    (" javascript:alert(1)", "security"),
    ("java\tscript:alert(1)", "security"),
    ("vbscript:msgbox", "security"),
    ("data:text/html;base64,PHNjcmlwdD4=", "security"),
    ("file:///etc/passwd", "security"),
    ("../Patient/1", "security"),
    ("Patient/../Organization/1", "security"),
    ("Patient/..", "security"),
    ("Patient/.", "security"),
    ("Patient//1", "security"),
    ("https://fhir.example.org/r4/../Patient/1", "security"),
    ("https://fhir.example.org//Patient/1", "security"),
    ("Patient\\1", "value"),
    ("Patient/ 1", "value"),
    ("Patient/1 ", "value"),
    ("Patient/%2e%2e", "value"),
    ("Patient/1%00", "value"),
    ("Patient/1\x00", "value"),
    ("Patient?identifier=x|1", "value"),
    ("Foo/1", "value"),
    ("patient/1", "value"),
    ("Patient/" + "a" * 65, "value"),
    ("Patient/1/_history/", "value"),
    ("Patient", "value"),
    ("Patient/1/extra", "value"),
    ("urn:uuid:not-a-uuid", "value"),
    ("urn:oid:abc", "value"),
    ("urn:isbn:123", "value"),
    ("ftp://example.org/Patient/1", "value"),
    ("https://user@example.org/Patient/1", "value"),
    ("https://example.org/fhir", "value"),
    ("#not valid", "value"),
    ("#missing", "value"),  # no contained resource with that id
    ("x" * 5000, "value"),
]


@pytest.mark.parametrize(("ref", "code"), BAD_REFERENCES, ids=[repr(r)[:40] for r, _ in BAD_REFERENCES])
def test_bad_references(ref: str, code: str) -> None:
    issues = assert_issue(
        changed(OBSERVATION, lambda r: r["subject"].update(reference=ref)), "Observation.subject.reference"
    )
    assert code in {i.code for i in issues if i.path == "Observation.subject.reference"}


@pytest.mark.parametrize(
    "ref",
    [
        "Patient/1",
        "Patient/a-b.c",
        "Patient/1/_history/2",
        "http://example.org/Patient/1",
        "https://fhir.example.org:8443/base/r4/Patient/1/_history/abc",
        "urn:uuid:0C3151BD-1CBF-4D64-B04D-CD9187A4C6E0",
        "urn:oid:1.2.840.113619.6.197",
        "MedicinalProduct/1",  # an R4 type R4B lacks is still a fine reference
    ],
)
def test_good_references(ref: str) -> None:
    assert reference_problem(ref) is None
    assert validation_issues(changed(OBSERVATION, lambda r: r["subject"].update(reference=ref))) == []


@pytest.mark.parametrize("ref", ["", "#", "?", "/", "//", "http://", "urn:", ":"])
def test_degenerate_references_do_not_crash(ref: str) -> None:
    assert reference_problem(ref) is None if ref == "#" else reference_problem(ref) is not None


def test_references_are_checked_everywhere() -> None:
    resource = changed(PATIENT, lambda r: r["link"][0]["other"].update(reference="javascript:x"))
    resource["extension"].append({"url": "http://example.org/e", "valueReference": {"reference": "../x"}})
    resource["contained"] = [{"resourceType": "Organization", "id": "o", "partOf": {"reference": "data:x"}}]
    got = {(i.path, i.code) for i in validation_issues(resource)}
    assert {
        ("Patient.link[0].other.reference", "security"),
        ("Patient.extension[1].valueReference.reference", "security"),
        ("Patient.contained[0].partOf.reference", "security"),
    } <= got


def test_local_references_resolve_to_contained_resources() -> None:
    resource = changed(CONTAINED, lambda r: r["performer"].append({"reference": "#nobody"}))
    issues = validation_issues(resource)
    assert [(i.path, i.code) for i in issues] == [("Observation.performer[1].reference", "value")]


def test_dangerous_uri_schemes_in_other_uri_elements() -> None:
    resource = changed(
        DOCUMENT_REFERENCE, lambda r: r["content"][1]["attachment"].update(url="javascript:alert(document.cookie)")
    )
    assert_issue(resource, "DocumentReference.content[1].attachment.url", "security")
    assert_issue(
        changed(PATIENT, lambda r: r["identifier"][0].update(system="data:,x")), "Patient.identifier[0].system"
    )


# --- narrative -------------------------------------------------------------------------------------------------------

BAD_NARRATIVES = [
    ("script", div("<script>alert(1)</script>"), "security"),
    ("script-uppercase", div("<SCRIPT>alert(1)</SCRIPT>"), "security"),
    ("onclick", div('<p onclick="alert(1)">x</p>'), "security"),
    ("onerror", div('<img src="#x" onerror="alert(1)"/>'), "security"),
    ("onload-uppercase", div('<p ONLOAD="alert(1)">x</p>'), "security"),
    ("javascript-href", div('<a href="javascript:alert(1)">x</a>'), "security"),
    ("javascript-href-entity", div('<a href="&#106;avascript:alert(1)">x</a>'), "security"),
    ("javascript-href-tab", div('<a href="java&#9;script:alert(1)">x</a>'), "security"),
    ("data-html-img", div('<img src="data:text/html;base64,PHNjcmlwdD4="/>'), "security"),
    ("svg-data-img", div('<img src="data:image/svg+xml;base64,PHN2Zz4="/>'), "security"),
    ("iframe", div('<iframe src="https://evil.example"/>'), "security"),
    ("object", div('<object data="x.swf"/>'), "security"),
    ("embed", div('<embed src="x.swf"/>'), "security"),
    ("style-element", div("<style>body{display:none}</style>"), "security"),
    ("form", div('<form action="https://evil.example"><input name="x"/></form>'), "security"),
    ("link", div('<link rel="stylesheet" href="https://evil.example/x.css"/>'), "security"),
    ("meta", div('<meta http-equiv="refresh" content="0;url=https://evil.example"/>'), "security"),
    ("base", div('<base href="https://evil.example/"/>'), "security"),
    ("style-expression", div('<p style="width: expression(alert(1))">x</p>'), "security"),
    ("style-url", div('<p style="background:url(https://evil.example/t.gif)">x</p>'), "security"),
    ("foreign-namespace", div('<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"/></svg>'), "security"),
    ("prefixed-script", div('<h:script xmlns:h="http://www.w3.org/1999/xhtml">x</h:script>'), "security"),
    ("xlink-href", div('<a xmlns:xl="http://www.w3.org/1999/xlink" xl:href="javascript:x">y</a>'), "security"),
    ("unknown-attribute", div('<p srcdoc="x">y</p>'), "security"),
    ("doctype", '<!DOCTYPE div [<!ENTITY x "y">]>' + div("&x;"), "security"),
    ("processing-instruction", div('<?xml-stylesheet href="x"?>x'), "security"),
    ("no-namespace", "<div><p>x</p></div>", "structure"),
    ("not-a-div", f"<p {XHTML}>x</p>", "structure"),
    ("plain-text", "just text", "structure"),
    ("malformed", f"<div {XHTML}><p>x</div>", "structure"),
    ("two-roots", div("x") + div("y"), "structure"),
    ("html-entity", div("a&nbsp;b"), "structure"),
    ("empty", div("  "), "value"),
]


@pytest.mark.parametrize(("markup", "code"), [c[1:] for c in BAD_NARRATIVES], ids=[c[0] for c in BAD_NARRATIVES])
def test_unsafe_or_malformed_narrative(markup: str, code: str) -> None:
    resource = changed(PATIENT, lambda r: r["text"].update(div=markup))
    issues = assert_issue(resource, "Patient.text.div", code)
    assert all(i.path == "Patient.text.div" for i in issues)
    assert narrative_problems(markup)


def test_narrative_in_contained_resources_is_checked() -> None:
    resource = changed(
        CONTAINED,
        lambda r: r["contained"][0].update(text={"status": "generated", "div": div("<script>x</script>")}),
    )
    assert_issue(resource, "Observation.contained[0].text.div", "security")


def test_narrative_billion_laughs_is_refused_without_expansion() -> None:
    bomb = '<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>' + div("&b;" * 100)
    assert narrative_problems(bomb)[0][0] == "security"


# --- control characters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\ud800"], ids=repr)
def test_control_characters_in_strings(char: str) -> None:
    resource = changed(PATIENT, lambda r: r["name"][0].update(family=f"Do{char}e"))
    issues = assert_issue(resource, "Patient.name[0].family", "value")
    assert char not in issues[0].message


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda r: r["note"][0].update(text="a\x00b"), "Observation.note[0].text"),
        (lambda r: r["code"]["coding"][0].update(display="x\x07"), "Observation.code.coding[0].display"),
        (lambda r: r.update(id="hr\x00"), "Observation.id"),
        (lambda r: r["subject"].update(display="\x1b[31m"), "Observation.subject.display"),
        (lambda r: r.update(status="final\x00"), "Observation.status"),
    ],
)
def test_control_characters_anywhere(change: Callable[[dict[str, Any]], object], path: str) -> None:
    assert_issue(changed(OBSERVATION, change), path)


# --- contained resources -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path", "code"),
    [
        (
            lambda r: r["contained"][0].update(contained=[{"resourceType": "Patient"}]),
            "Observation.contained[0].contained",
            "structure",
        ),
        (lambda r: r["contained"].append({"id": "x"}), "Observation.contained[2].resourceType", "required"),
        (
            lambda r: r["contained"].append({"resourceType": "Nope", "id": "x"}),
            "Observation.contained[2].resourceType",
            "not-supported",
        ),
        (
            lambda r: r["contained"].append({"resourceType": "HumanName"}),
            "Observation.contained[2].resourceType",
            "not-supported",
        ),
        (lambda r: r["contained"][1].update(gender="robot"), "Observation.contained[1].gender", "code-invalid"),
        (lambda r: r["contained"][0].update(birthDate="1990-13-01"), "Observation.contained[0].birthDate", "value"),
        (lambda r: r["contained"][0].update(foo=1), "Observation.contained[0].foo", "structure"),
    ],
)
def test_contained_resource_problems(change: Callable[[dict[str, Any]], object], path: str, code: str) -> None:
    assert_issue(changed(CONTAINED, change), path, code)


# --- many problems, deep nesting -------------------------------------------------------------------------------------


def test_all_issues_are_reported_not_just_the_first() -> None:
    resource = changed(PATIENT, lambda r: r.update(id="a" * 65, gender="robot", foo=1, active="yes"))
    resource["managingOrganization"]["reference"] = "javascript:alert(1)"
    resource["text"]["div"] = div('<script>x</script><p onclick="y">z</p>')
    resource["name"][0]["family"] = "D\x00e"
    resource["birthDate"] = "1980-13-01"
    got = set(paths(validation_issues(resource)))
    assert {
        "Patient.id",
        "Patient.gender",
        "Patient.foo",
        "Patient.active",
        "Patient.managingOrganization.reference",
        "Patient.text.div",
        "Patient.name[0].family",
        "Patient.birthDate",
    } <= got


def test_issue_count_is_capped() -> None:
    resource = {"resourceType": "Patient", "telecom": [{"system": "pigeon", "use": "cell"} for _ in range(500)]}
    issues = validation_issues(resource)
    assert len(issues) == MAX_ISSUES
    assert issues[-1].code == "too-costly"


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(300):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    issues = validation_issues({"resourceType": "Patient", "extension": [extension]})
    assert [i.code for i in issues] == ["too-costly"]
    assert issues[0].path.startswith("Patient.extension[0].extension[0]")


def test_reasonable_nesting_is_fine() -> None:
    item: dict[str, Any] = {"linkId": "leaf", "type": "string"}
    for level in range(15):
        item = {"linkId": f"g{level}", "type": "group", "item": [item]}
    assert validation_issues({"resourceType": "Questionnaire", "status": "draft", "item": [item]}) == []


# --- validate_resource and the OperationOutcome ----------------------------------------------------------------------


def validate_outcome(outcome: dict[str, Any]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class("OperationOutcome").model_validate(outcome)
    assert validation_issues(outcome, expected_type="OperationOutcome") == []


def test_validate_resource_raises_with_issues_and_an_operation_outcome() -> None:
    bad = changed(OBSERVATION, lambda r: r.update(status="bogus", id="x" * 65))
    bad["subject"]["reference"] = "javascript:alert(1)"
    bad["_status"] = {"extension": [{"url": "http://example.org/x", "valueFoo": 1}]}
    with pytest.raises(FhirValidationError) as caught:
        validate_resource(bad, expected_type="Observation")
    error = caught.value
    assert error.status == 400 and error.code == "invalid-resource"
    assert {"Observation.status", "Observation.id", "Observation.subject.reference"} <= set(paths(error.issues))
    assert "4 issues" in error.detail
    outcome = error.operation_outcome
    assert outcome is not None
    validate_outcome(outcome)
    assert outcome["resourceType"] == "OperationOutcome"
    assert len(outcome["issue"]) == len(error.issues)
    for entry, issue in zip(outcome["issue"], error.issues, strict=True):
        assert entry["severity"] == "error"
        assert entry["code"] == issue.code
        assert entry["diagnostics"] == issue.message
    expressions = [e["expression"][0] for e in outcome["issue"]]
    assert "Observation.status.extension[0].valueFoo" in expressions  # FHIRPath has no "_status"
    assert "Observation.subject.reference" in expressions


@pytest.mark.parametrize("value", [None, [], "x", {"resourceType": "Nope"}, {"resourceType": "Observation"}])
def test_operation_outcome_is_valid_for_any_failure(value: object) -> None:
    with pytest.raises(FhirValidationError) as caught:
        validate_resource(value, expected_type="Observation")
    assert caught.value.operation_outcome is not None
    validate_outcome(caught.value.operation_outcome)


def test_operation_outcome_maps_unknown_codes_and_empty_lists() -> None:
    outcome = operation_outcome([Issue("Patient.name", "weird", "m"), Issue("Patient.gender", "code-invalid", "n")])
    assert [e["code"] for e in outcome["issue"]] == ["invalid", "code-invalid"]
    assert outcome["issue"][0]["expression"] == ["Patient.name"]
    validate_outcome(outcome)
    empty = operation_outcome([])
    validate_outcome(empty)
    assert empty["issue"][0]["severity"] == "information"


def test_validate_resource_returns_none_when_valid() -> None:
    assert validate_resource(PATIENT, expected_type="Patient") is None  # type: ignore[func-returns-value]


def test_messages_do_not_echo_values() -> None:
    secret = "SSN-123-45-6789"
    resource = changed(PATIENT, lambda r: r.update(gender=secret, id=secret + "!"))
    resource["managingOrganization"]["reference"] = "Organization/" + secret + " x"
    resource["name"][0]["family"] = secret + "\x00"
    resource["birthDate"] = secret
    for issue in validation_issues(resource):
        assert secret not in issue.message
