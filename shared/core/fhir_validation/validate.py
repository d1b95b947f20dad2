"""Validating one resource with both layers: its issues (``validation_issues``) or an error (``validate_resource``)."""

from __future__ import annotations

from shared.core.errors import FhirValidationError, Issue
from shared.core.fhir_ids import RESOURCE_TYPE_RE
from shared.core.fhir_validation.model_validation import pydantic_issues
from shared.core.fhir_validation.outcome import operation_outcome
from shared.core.fhir_validation.resource_types import R4_RESOURCE_TYPES, R4B_ONLY, resource_class
from shared.core.fhir_validation.walker import MAX_ISSUES, TooManyIssuesError, Walker

__all__ = ["validate_resource", "validation_issues"]


def validation_issues(resource: object, *, expected_type: str | None = None) -> list[Issue]:
    """Every problem with ``resource`` (parsed JSON) as FHIR R4, at most ``MAX_ISSUES``; empty when valid."""
    root = expected_type or "Resource"
    if not isinstance(resource, dict):
        return [Issue(root, "structure", "A resource must be a JSON object")]
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [Issue(f"{root}.resourceType", "required", "A resource needs a string resourceType")]
    if expected_type is not None and resource_type != expected_type:
        return [Issue(f"{root}.resourceType", "invalid", f"Expected a {expected_type} resource")]
    if RESOURCE_TYPE_RE.fullmatch(resource_type) is None:
        return [Issue(f"{root}.resourceType", "not-supported", "Unknown resource type")]
    model, problem = resource_class(resource_type)
    if model is None:
        known = resource_type in R4_RESOURCE_TYPES or resource_type in R4B_ONLY
        return [Issue(f"{resource_type if known else root}.resourceType", "not-supported", problem)]

    walker = Walker()
    complete = True
    try:
        walker.resource(resource, resource_type, 1, None)
    except TooManyIssuesError:
        complete = False
    issues = walker.issues
    if complete and not walker.too_deep:
        seen = {issue.path for issue in issues}
        for issue in pydantic_issues(resource_type, model, resource):
            if issue.code == "invalid" and issues:
                continue  # fhir.resources choked on something our own pass has already reported
            if issue.path not in seen:
                seen.add(issue.path)
                issues.append(issue)
    if len(issues) > MAX_ISSUES:
        issues = issues[: MAX_ISSUES - 1]
        issues.append(Issue(resource_type, "too-costly", f"More than {MAX_ISSUES} issues; the first ones are listed"))
    return issues


def validate_resource(resource: object, *, expected_type: str | None = None) -> None:
    """Raise ``FhirValidationError`` (with ``issues`` and an ``operation_outcome``) unless ``resource`` is valid."""
    issues = validation_issues(resource, expected_type=expected_type)
    if issues:
        count = len(issues)
        raise FhirValidationError(
            detail=f"The resource is not valid FHIR R4 ({count} issue{'s' if count != 1 else ''})",
            issues=issues,
            operation_outcome=operation_outcome(issues),
        )
