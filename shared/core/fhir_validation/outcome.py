"""OperationOutcome building: our issues as a FHIR R4 ``OperationOutcome`` resource."""

from __future__ import annotations

from typing import Any, Final

from shared.core.errors import Issue

__all__ = ["operation_outcome"]

_ISSUE_TYPES: Final = frozenset(
    """
    invalid structure required value invariant security login unknown expired forbidden suppressed processing
    not-supported duplicate multiple-matches not-found deleted too-long code-invalid extension too-costly
    business-rule conflict transient lock-error no-store exception timeout incomplete throttled informational
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An R4 OperationOutcome with one ``error`` issue per ``Issue`` (an informational one when there are none)."""
    if not issues:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": "No issues"}],
        }
    entries: list[dict[str, Any]] = []
    for issue in issues:
        entry: dict[str, Any] = {
            "severity": "error",
            "code": issue.code if issue.code in _ISSUE_TYPES else "invalid",
            "diagnostics": issue.message or "Invalid",
        }
        expression = _fhirpath(issue.path)
        if expression:
            entry["expression"] = [expression]
        entries.append(entry)
    return {"resourceType": "OperationOutcome", "issue": entries}


def _fhirpath(path: str) -> str:
    """``Patient._birthDate.extension[0]`` -> ``Patient.birthDate.extension[0]`` (FHIRPath has no ``_`` twins)."""
    return path.replace("._", ".").strip()
