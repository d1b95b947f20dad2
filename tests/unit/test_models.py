"""The change request contract: shapes accepted, and every refusal naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.core.models import TERMINAL_STATUSES, ChangeRequest, ChangeStatus, Operation, Principal

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female"}


def locs(exc: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in exc.errors()]


def test_update_request_in_camel_case() -> None:
    req = ChangeRequest.model_validate(
        {"target": "local-ehr", "operation": "update", "resource": PATIENT, "baseVersion": 'W/"abc-1"', "dryRun": True}
    )
    assert req.operation is Operation.UPDATE and req.base_version == "abc-1" and req.dry_run
    assert (req.resource_type, req.resource_id) == ("Patient", "p1")


@pytest.mark.parametrize(("given", "expected"), [(3, "3"), ("3", "3"), ('W/"3"', "3"), ('"9f1c-2"', "9f1c-2")])
def test_base_version_is_an_opaque_string(given: Any, expected: str) -> None:
    req = ChangeRequest.model_validate(
        {"target": "t", "operation": "update", "resource": PATIENT, "baseVersion": given}
    )
    assert req.base_version == expected


def test_patch_request() -> None:
    req = ChangeRequest.model_validate(
        {
            "target": "t",
            "operation": "patch",
            "resourceRef": "Patient/p1",
            "patch": [
                {"op": "replace", "path": "/telecom/0/value", "value": "555-0100"},
                {"op": "remove", "path": "/x"},
            ],
        }
    )
    assert (req.resource_type, req.resource_id) == ("Patient", "p1")
    assert req.patch is not None and req.patch[1].to_wire() == {"op": "remove", "path": "/x"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"operation": "create", "resource": PATIENT}, "target"),
        ({"target": "t", "operation": "delete", "resource": PATIENT}, "operation"),
        ({"target": "t/../x", "operation": "create", "resource": PATIENT}, "target"),
        ({"target": "t", "operation": "create", "resource": PATIENT, "extra": 1}, "extra"),
        ({"target": "t", "operation": "create", "resource": PATIENT, "dryRun": "maybe"}, "dryRun"),
        ({"target": "t", "operation": "update", "resource": PATIENT, "baseVersion": True}, "baseVersion"),
        ({"target": "t", "operation": "update", "resource": PATIENT, "baseVersion": "a b"}, "baseVersion"),
        (
            {"target": "t", "operation": "patch", "resourceRef": "Patient", "patch": [{"op": "remove", "path": "/a"}]},
            "resourceRef",
        ),
        (
            {"target": "t", "operation": "patch", "resourceRef": "Patient/1", "patch": [{"op": "bogus", "path": "/a"}]},
            "patch.0.op",
        ),
        (
            {"target": "t", "operation": "patch", "resourceRef": "Patient/1", "patch": [{"op": "add", "path": "a"}]},
            "patch.0.path",
        ),
    ],
)
def test_bad_fields_are_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChangeRequest.model_validate(body)
    assert any(loc.startswith(field) for loc in locs(err.value)), locs(err.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"target": "t", "operation": "create"}, "'resource' is required"),
        ({"target": "t", "operation": "update", "resource": {"resourceType": "Patient"}}, "'resource.id' is required"),
        ({"target": "t", "operation": "create", "resource": {"id": "x"}}, "resourceType"),
        ({"target": "t", "operation": "patch", "resourceRef": "Patient/1"}, "'patch' must be a non-empty list"),
        ({"target": "t", "operation": "patch", "resourceRef": "Patient/1", "patch": []}, "non-empty"),
        (
            {"target": "t", "operation": "patch", "resourceRef": "Patient/1", "patch": [{"op": "add", "path": "/a"}]},
            "needs 'value'",
        ),
        ({"target": "t", "operation": "update", "resource": PATIENT, "resourceRef": "Patient/p2"}, "does not match"),
    ],
)
def test_shape_rules(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ChangeRequest.model_validate(body)


def test_terminal_states_match_the_design() -> None:
    assert {s.value for s in TERMINAL_STATUSES} == {
        "completed",
        "planned",
        "rejected",
        "conflict",
        "failed",
        "expired",
        "cancelled",
    }
    assert not ChangeStatus.AWAITING_APPROVAL.is_terminal and ChangeStatus.EXPIRED.is_terminal


def test_principal_caller_key_scopes_by_app_and_user() -> None:
    assert Principal(app_id="crm").caller_key != Principal(app_id="crm", user_id="u1").caller_key
