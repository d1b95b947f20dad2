"""Field-ownership policy: loading and validating the YAML file, and the decisions it gives."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from shared.core.errors import ConfigurationError
from shared.core.policy import Policy, PolicyDecision

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "config" / "policy.yaml"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category"


@pytest.fixture(scope="module")
def demo() -> Policy:
    return Policy.from_file(DEMO)


def observation(category: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": VITALS, "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


def crm(policy: Policy, *paths: str, operation: str = "update", base_version: bool = True) -> PolicyDecision:
    return policy.decide(
        source="crm",
        target="local-ehr",
        resource_type="Patient",
        operation=operation,
        changed_paths=list(paths),
        proposed=None,
        base_version_given=base_version,
    )


def vitals(policy: Policy, proposed: dict[str, Any] | None, *more: str) -> PolicyDecision:
    paths = ["Observation.status", "Observation.category", "Observation.code", "Observation.valueQuantity", *more]
    return policy.decide(
        source="vitals-app",
        target="local-ehr",
        resource_type="Observation",
        operation="create",
        changed_paths=paths,
        proposed=proposed,
        base_version_given=False,
    )


def policy_text(rules: str, *, resource_type: str = "Observation", operations: str = "[create, update, patch]") -> str:
    head = (
        'version: "7"\n'
        "sources:\n"
        "  app:\n"
        "    app_ids: [app]\n"
        "    targets:\n"
        "      t:\n"
        f"        {resource_type}:\n"
        f"          operations: {operations}\n"
    )
    return head + "".join(f"          {line}\n" for line in rules.strip("\n").splitlines())


def decide(policy: Policy, *paths: str, resource_type: str = "Observation", **kw: Any) -> PolicyDecision:
    args: dict[str, Any] = {
        "source": "app",
        "target": "t",
        "resource_type": resource_type,
        "operation": "update",
        "changed_paths": list(paths),
        "proposed": None,
        "base_version_given": True,
    }
    return policy.decide(**(args | kw))


# --- the demo policy ------------------------------------------------------------------------------------------------


def test_demo_loads_with_versioned_hash(demo: Policy) -> None:
    digest = hashlib.sha256(DEMO.read_text(encoding="utf-8").encode()).hexdigest()[:8]
    assert demo.version == f"2026-11-25+{digest}"
    assert re.fullmatch(r"2026-11-25\+[0-9a-f]{8}", demo.version)
    assert demo.sources == ["crm", "vitals-app"]


def test_app_ids_map_to_sources(demo: Policy) -> None:
    assert demo.source_for_app("crm") == "crm"
    assert demo.source_for_app(" CRM ") == "crm"
    assert demo.source_for_app("vitals-app") == "vitals-app"
    assert demo.source_for_app("someone-else") is None


def test_crm_telecom_is_allowed_with_its_reason(demo: Policy) -> None:
    decision = crm(demo, "Patient.telecom")
    assert decision.decision == "allow"
    assert [(r.path, r.rule, r.code) for r in decision.reasons] == [("Patient.telecom", "allow", "path-rule")]
    assert decision.source == "crm" and decision.policy_version == demo.version


def test_crm_name_needs_approval(demo: Policy) -> None:
    decision = crm(demo, "Patient.telecom", "Patient.name")
    assert decision.decision == "approve"
    assert decision.paths("approve") == ["Patient.name"] and decision.paths("allow") == ["Patient.telecom"]


def test_crm_gender_is_denied_by_default_and_named(demo: Policy) -> None:
    decision = crm(demo, "Patient.telecom", "Patient.gender")
    assert decision.decision == "deny"
    denied = [r for r in decision.reasons if r.rule == "deny"]
    assert [(r.path, r.code) for r in denied] == [("Patient.gender", "default-deny")]
    assert "Patient.gender" in denied[0].message
    assert [r.path for r in decision.reasons] == ["Patient.telecom", "Patient.gender"]


def test_crm_may_not_create(demo: Policy) -> None:
    decision = crm(demo, "Patient.telecom", operation="create")
    assert decision.decision == "deny"
    assert decision.reasons[0].code == "operation-not-allowed" and "'create'" in decision.reasons[0].message


def test_unknown_app_is_denied(demo: Policy) -> None:
    decision = demo.decide(
        source=demo.source_for_app("stranger"),
        target="local-ehr",
        resource_type="Patient",
        operation="update",
        changed_paths=["Patient.telecom"],
        proposed=None,
        base_version_given=True,
    )
    assert decision.decision == "deny" and decision.source is None
    assert decision.reasons[0].code == "unknown-source"


@pytest.mark.parametrize(
    ("source", "target", "resource_type", "code"),
    [
        ("nobody", "local-ehr", "Patient", "unknown-source"),
        ("crm", "other-ehr", "Patient", "unknown-target"),
        ("crm", "local-ehr", "Observation", "unknown-resource-type"),
    ],
)
def test_unknown_source_target_or_type_is_denied_saying_which(
    demo: Policy, source: str, target: str, resource_type: str, code: str
) -> None:
    decision = demo.decide(
        source=source,
        target=target,
        resource_type=resource_type,
        operation="update",
        changed_paths=[],
        proposed=None,
        base_version_given=True,
    )
    assert decision.decision == "deny" and decision.reasons[0].code == code


def test_vitals_app_creates_vital_signs(demo: Policy) -> None:
    decision = vitals(demo, observation("vital-signs"))
    assert decision.decision == "allow"
    assert {r.path for r in decision.reasons} == {
        "Observation.status",
        "Observation.category",
        "Observation.code",
        "Observation.valueQuantity",
    }
    assert all("'*'" in r.message for r in decision.reasons)


def test_vitals_app_may_not_create_laboratory_results(demo: Policy) -> None:
    decision = vitals(demo, observation("laboratory"))
    assert decision.decision == "deny" and decision.reasons[0].code == "condition-not-met"
    assert "laboratory" not in decision.reasons[0].message


def test_condition_without_proposed_resource_denies(demo: Policy) -> None:
    assert vitals(demo, None).reasons[0].code == "condition-error"


def test_condition_does_not_change_the_resource(demo: Policy) -> None:
    proposed = observation("vital-signs")
    vitals(demo, proposed)
    assert proposed == observation("vital-signs")


def test_empty_changed_paths_is_allowed(demo: Policy) -> None:
    decision = crm(demo)
    assert decision.decision == "allow" and decision.reasons[0].code == "no-change"


def test_wire_form_is_camel_case_and_round_trips(demo: Policy) -> None:
    decision = crm(demo, "Patient.name")
    wire = decision.to_wire()
    assert wire["policyVersion"] == demo.version and wire["decision"] == "approve"
    assert wire["reasons"][0] == {
        "path": "Patient.name",
        "rule": "approve",
        "code": "path-rule",
        "message": wire["reasons"][0]["message"],
    }
    assert PolicyDecision.from_wire(wire) == decision


def test_check_targets_names_unknown_targets(demo: Policy) -> None:
    demo.check_targets({"local-ehr"})
    line = DEMO.read_text(encoding="utf-8").splitlines().index("      local-ehr:") + 1
    with pytest.raises(
        ConfigurationError, match=rf"line {line}: sources\.crm\.targets\.local-ehr: .*not in the targets"
    ):
        demo.check_targets({"other"})


# --- rules and their precedence ---------------------------------------------------------------------------------


def test_require_base_version_on_update_and_patch_only() -> None:
    policy = Policy.from_text(policy_text("require_base_version: true\npaths:\n  '*': allow"))
    for operation in ("update", "patch"):
        decision = decide(policy, "Observation.status", operation=operation, base_version_given=False)
        assert decision.decision == "deny" and decision.reasons[0].code == "base-version-required"
        assert decide(policy, "Observation.status", operation=operation).decision == "allow"
    assert decide(policy, "Observation.status", operation="create", base_version_given=False).decision == "allow"


def test_most_specific_rule_wins() -> None:
    policy = Policy.from_text(
        policy_text(
            """
paths:
  Observation.valueQuantity: allow
  Observation.value[x]: approve
  Observation.identifier: deny
  "*": allow
"""
        )
    )

    def rule(path: str) -> tuple[str, str]:
        reason = decide(policy, path).reasons[0]
        return reason.path, reason.rule

    assert rule("Observation.valueQuantity") == ("Observation.valueQuantity", "allow")
    assert rule("Observation.valueString") == ("Observation.valueString", "approve")
    assert rule("Observation.value[x]") == ("Observation.value[x]", "approve")
    assert rule("Observation.value") == ("Observation.value[x]", "approve")
    assert rule("Observation.identifier") == ("Observation.identifier", "deny")
    assert rule("Observation.status") == ("Observation.status", "allow")


META_RULES = """
paths:
  Observation.meta.tag: approve
  Observation.meta: deny
  "*": allow
"""


@pytest.mark.parametrize(
    ("rules", "path", "expected"),
    [
        pytest.param(META_RULES, "Observation.meta.tag", ("approve", "Observation.meta.tag"), id="its-own-rule"),
        pytest.param(META_RULES, "Observation.meta.profile", ("deny", "Observation.meta"), id="meta-covers-profile"),
        pytest.param("paths:\n  '*': allow", "Observation.meta.source", ("allow", "*"), id="star-covers-source"),
        pytest.param("paths:\n  '*': allow", "Observation.meta.security", ("deny", None), id="star-not-security"),
        pytest.param(
            "paths:\n  Observation.meta: allow", "Observation.meta.security", ("deny", None), id="meta-not-security"
        ),
        pytest.param(
            "paths:\n  Observation.meta.security: approve",
            "Observation.meta.security[0].code",
            ("approve", "Observation.meta.security"),
            id="security-by-name",
        ),
    ],
)
def test_meta_elements_take_their_own_rules(rules: str, path: str, expected: tuple[str, str | None]) -> None:
    reason = decide(Policy.from_text(policy_text(rules)), path).reasons[0]
    rule, key = expected
    assert reason.path == path.split("[", 1)[0] and reason.rule == rule
    if key is None:
        assert reason.code == "default-deny" and "rule 'Observation.meta.security' of its own" in reason.message
    else:
        assert reason.code == "path-rule" and f"rule '{key}'" in reason.message


@pytest.mark.parametrize("path", ["Observation.meta", "Observation.meta.versionId", "Observation.meta.colour"])
def test_a_meta_path_that_names_no_element_a_change_sets_is_denied(path: str) -> None:
    policy = Policy.from_text(policy_text("paths:\n  Observation.meta: allow\n  '*': allow"))
    assert decide(policy, path).reasons[0].code == "invalid-path"


def test_demo_policy_judges_labels(demo: Policy) -> None:
    profile = vitals(demo, observation("vital-signs"), "Observation.meta.profile")
    assert profile.decision == "allow"
    labelled = vitals(demo, observation("vital-signs"), "Observation.meta.security")
    assert labelled.decision == "deny"
    assert [r.path for r in labelled.reasons if r.rule == "deny"] == ["Observation.meta.security"]
    tagged = crm(demo, "Patient.telecom", "Patient.meta.tag")
    assert tagged.decision == "deny" and tagged.reasons[-1].code == "default-deny"


def test_nested_paths_count_once_for_their_element(demo: Policy) -> None:
    decision = crm(demo, "Patient.telecom[0].value", "Patient.telecom[1]", "Patient.address[0].line[1]")
    assert [r.path for r in decision.reasons] == ["Patient.telecom", "Patient.address"]
    assert decision.decision == "allow"


@pytest.mark.parametrize("path", ["Observation.code", "telecom", "/telecom/0", "Patient.tele-com", ""])
def test_paths_of_another_type_or_shape_are_denied(demo: Policy, path: str) -> None:
    decision = crm(demo, "Patient.telecom", path)
    assert decision.decision == "deny"
    assert decision.reasons[-1].code == "invalid-path"


def test_any_deny_beats_approve() -> None:
    policy = Policy.from_text(policy_text("paths:\n  Observation.status: approve\n  Observation.note: deny"))
    assert decide(policy, "Observation.status", "Observation.note").decision == "deny"
    assert decide(policy, "Observation.status").decision == "approve"


def test_condition_that_fails_on_the_data_denies() -> None:
    policy = Policy.from_text(policy_text("when: \"Observation.code.text.substring('a') = 'b'\"\npaths:\n  '*': allow"))
    proposed = {"resourceType": "Observation", "status": "final", "code": {"text": "hello"}}
    decision = decide(policy, "Observation.code", operation="create", proposed=proposed)
    assert decision.decision == "deny" and decision.reasons[0].code == "condition-error"


def test_condition_can_use_resource_variable_and_choice_types() -> None:
    policy = Policy.from_text(
        policy_text("when: \"%resource.value.ofType(Quantity).value > 50\"\npaths:\n  '*': allow")
    )
    high = {"resourceType": "Observation", "valueQuantity": {"value": 72}}
    low = {"resourceType": "Observation", "valueQuantity": {"value": 12}}
    assert decide(policy, "Observation.valueQuantity", proposed=high).decision == "allow"
    assert decide(policy, "Observation.valueQuantity", proposed=low).decision == "deny"


def test_unquoted_date_version_and_app_id_case() -> None:
    text = policy_text("paths: {}").replace('version: "7"', "version: 2026-01-02").replace("[app]", "[App-1]")
    policy = Policy.from_text(text)
    assert policy.version.startswith("2026-01-02+")
    assert policy.source_for_app("app-1") == "app"


# --- invalid files ------------------------------------------------------------------------------------------------


OBS = "sources.app.targets.t.Observation"


def path_rule_case(case_id: str, rule: str, field: str, says: str) -> Any:
    """A policy whose one path rule is ``rule``: refused on its line (10), naming ``{OBS}.paths`` + ``field``."""
    return pytest.param(policy_text(f"paths:\n  {rule}"), 10, f"{OBS}.paths{field}", says, id=case_id)


def when_case(case_id: str, expression: str, says: str) -> Any:
    """A policy whose ``when`` is ``expression``: refused on its line (9), naming ``{OBS}.when``."""
    return pytest.param(policy_text(f"when: '{expression}'"), 9, f"{OBS}.when", says, id=case_id)


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        path_rule_case("bad-decision", "Observation.status: maybe", '\\["Observation.status"\\]', "'allow'"),
        pytest.param(
            policy_text("paths: {}", operations="[create, upsert]"),
            8,
            f"{OBS}.operations\\[1\\]",
            "'create'",
            id="unknown-operation",
        ),
        path_rule_case("path-without-type", "status: allow", ".status", "not a rule path"),
        path_rule_case("bad-path-syntax", "Observation..code: allow", "", "not a rule path"),
        path_rule_case("path-type-mismatch", "Patient.name: allow", '\\["Patient.name"\\]', "rules are for Obs"),
        path_rule_case("unknown-element", "Observation.stauts: allow", "", "did you mean 'status'"),
        path_rule_case("choice-without-x", "Observation.value: allow", "", "write 'Observation.value\\[x\\]'"),
        path_rule_case("x-on-non-choice", "Observation.code[x]: allow", "", "not a choice element"),
        path_rule_case("server-meta", "Observation.meta.versionId: allow", "", "server sets meta.versionId"),
        path_rule_case("unknown-meta-element", "Observation.meta.tagg: allow", "", "did you mean 'tag'"),
        path_rule_case("nested-non-meta", "Observation.code.text: allow", "", "only meta's elements"),
        pytest.param(
            policy_text("paths: {}", resource_type="Patiant"),
            7,
            "sources.app.targets.t.Patiant",
            "mean 'Patient'",
            id="unknown-resource-type",
        ),
        when_case("fhirpath-syntax", "Observation.(", "FHIRPath syntax error at column 13"),
        when_case("fhirpath-trailing-text", "Observation.code )", "FHIRPath syntax error"),
        when_case("fhirpath-unknown-function", "Observation.code.wher(true)", "'wher\\(\\)' is not known"),
        when_case("fhirpath-arity", "Observation.code.where()", "takes 1 argument"),
        when_case("fhirpath-other-root", "Patient.active", "starts from Patient"),
        pytest.param(
            policy_text("require_base_version: 'yes'"), 9, f"{OBS}.require_base_version", "boolean", id="not-a-boolean"
        ),
        pytest.param(policy_text("colour: red"), 9, f"{OBS}.colour", "not a known field", id="unknown-field"),
        pytest.param(
            policy_text("paths: {}", operations="[]"), 8, f"{OBS}.operations", "at least 1", id="no-operations"
        ),
        pytest.param(
            policy_text("paths:\n  Observation.code: allow\n  Observation.code: deny"),
            11,
            f"{OBS}.paths",
            "twice",
            id="duplicate-yaml-key",
        ),
        pytest.param(
            'version: "1"\nsources:\n  a:\n    app_ids: [x, y]\n  b:\n    app_ids: [Y]\n',
            6,
            r"sources\.b\.app_ids\[0\]",
            "already used by source 'a'",
            id="duplicate-app-id",
        ),
        pytest.param(
            'version: "1"\nsources:\n  a: [x]\n', 3, r"sources\.a", "must be a mapping", id="source-not-a-mapping"
        ),
        pytest.param(
            'version: "1"\nsources:\n  "a b":\n    app_ids: [x]\n',
            3,
            r'sources\["a b"\]',
            "must match",
            id="bad-source-name",
        ),
        pytest.param(
            'version: "1"\nsources: {}\nextra: 1\n', 3, "extra", "not a known field", id="unknown-top-level-field"
        ),
        pytest.param("sources: {}\n", 1, "version", "is required", id="missing-version"),
        pytest.param("- version\n- sources\n", 1, r"\(top level\)", "must be a mapping", id="top-level-not-a-mapping"),
        pytest.param(
            'version: "1"\nsources:\n  a:\n    app_ids: [x\n', 5, "", "YAML syntax error", id="yaml-syntax-error"
        ),
        pytest.param("", 1, "", "empty", id="empty-file"),
    ],
)
def test_invalid_file_names_field_and_line(text: str, line: int, field: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Policy.from_text(text, name="policy.yaml")
    message = str(raised.value)
    assert message.startswith("policy file policy.yaml: ")
    assert re.search(rf"line {line}\b[^;]*{field}", message), message
    assert re.search(says, message), message


def test_every_problem_is_reported_with_issues() -> None:
    text = policy_text("paths:\n  Observation.stauts: allow\n  Patient.name: deny", resource_type="Observation")
    text += "        Patiant:\n          operations: [update]\n"
    with pytest.raises(ConfigurationError) as raised:
        Policy.from_text(text)
    assert [(i.path, i.message.split(":")[0]) for i in raised.value.issues] == [
        (f'{OBS}.paths["Observation.stauts"]', "line 10"),
        (f'{OBS}.paths["Patient.name"]', "line 11"),
        ("sources.app.targets.t.Patiant", "line 12"),
    ]


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError, match=re.escape(str(missing))):
        Policy.from_file(missing)
