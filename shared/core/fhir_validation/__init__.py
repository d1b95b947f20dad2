"""FHIR R4 validation of a proposed resource.

Two layers, both reporting ``Issue(path, code, message)`` with a FHIR element path such as
``Patient.telecom[0].system``; ``code`` is a FHIR ``issue-type`` code (``structure``, ``required``, ``value``,
``invalid``, ``security``, ``code-invalid``, ``not-supported``, ``too-costly``):

1. Our own single pass over the JSON (``walker``), guided by the element tables of the ``fhir.resources.R4B`` models
   (``element_tables``): JSON value types (``"true"`` for a boolean, ``"2"`` for an integer, a string where an
   object belongs), unknown, null and empty elements, ``id`` syntax, ``reference`` syntax (``references``),
   narrative (XHTML) safety (``narrative``), control characters, URI schemes, base64 content, and the required code
   bindings (``bindings``). fhir.resources accepts all of these (it coerces JSON types and parses strings as JSON
   objects).
2. ``fhir.resources.R4B`` (pydantic) validation (``model_validation``): structure, cardinality, required elements,
   choice types and the primitive formats. Its issues at a path the first layer already reported are dropped.

``validate`` runs both; ``outcome`` turns issues into an OperationOutcome. R4B (4.3.0) is the closest model set to R4
(4.0.1) in fhir.resources 8.x; ``resource_types`` says which R4 types it can validate. Messages never echo element
values (they may carry PHI).
"""

from shared.core.fhir_validation.bindings import SUPPORTED_BINDING_TYPES
from shared.core.fhir_validation.narrative import narrative_problems
from shared.core.fhir_validation.outcome import operation_outcome
from shared.core.fhir_validation.references import reference_problem
from shared.core.fhir_validation.resource_types import R4_RESOURCE_TYPES
from shared.core.fhir_validation.validate import validate_resource, validation_issues
from shared.core.fhir_validation.walker import MAX_ISSUES

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
