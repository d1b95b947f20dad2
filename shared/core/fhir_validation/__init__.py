"""FHIR R4 validation of a proposed resource (the module ``walker``, to be split by concern)."""

from shared.core.fhir_validation.walker import (
    MAX_ISSUES,
    R4_RESOURCE_TYPES,
    SUPPORTED_BINDING_TYPES,
    narrative_problems,
    operation_outcome,
    reference_problem,
    validate_resource,
    validation_issues,
)

__all__ = [
    "MAX_ISSUES",
    "R4_RESOURCE_TYPES",
    "SUPPORTED_BINDING_TYPES",
    "narrative_problems",
    "operation_outcome",
    "reference_problem",
    "validate_resource",
    "validation_issues",
]
