"""The required code bindings we check ourselves (fhir.resources does not): FHIR type -> element -> allowed codes.

``CODE_BINDINGS`` binds ``code`` elements to the codes of a value set; ``CONCEPT_BINDINGS`` binds ``CodeableConcept``
elements to the codes of a code system (one coding from that system must be present and use one of them).
"""

from __future__ import annotations

from typing import Final

from shared.core.fhir_validation.resource_types import R4_RESOURCE_TYPES

__all__ = ["CODE_BINDINGS", "CONCEPT_BINDINGS", "SUPPORTED_BINDING_TYPES"]

_ADMINISTRATIVE_GENDER = ("administrative-gender", frozenset({"male", "female", "other", "unknown"}))

# FHIR type (resource, backbone element or data type, by its fhir.resources name) -> element -> (value set, codes).
# Data-type rows apply wherever the type appears (and to its profiles: Age, Count, Distance, Duration for Quantity).
CODE_BINDINGS: Final[dict[str, dict[str, tuple[str, frozenset[str]]]]] = {
    "Patient": {"gender": _ADMINISTRATIVE_GENDER},
    "PatientContact": {"gender": _ADMINISTRATIVE_GENDER},
    "Practitioner": {"gender": _ADMINISTRATIVE_GENDER},
    "RelatedPerson": {"gender": _ADMINISTRATIVE_GENDER},
    "Person": {"gender": _ADMINISTRATIVE_GENDER},
    "PatientLink": {"type": ("link-type", frozenset({"replaced-by", "replaces", "refer", "seealso"}))},
    "Observation": {
        "status": (
            "observation-status",
            frozenset(
                {
                    "registered",
                    "preliminary",
                    "final",
                    "amended",
                    "corrected",
                    "cancelled",
                    "entered-in-error",
                    "unknown",
                }
            ),
        )
    },
    "AllergyIntolerance": {
        "type": ("allergy-intolerance-type", frozenset({"allergy", "intolerance"})),
        "category": ("allergy-intolerance-category", frozenset({"food", "medication", "environment", "biologic"})),
        "criticality": ("allergy-intolerance-criticality", frozenset({"low", "high", "unable-to-assess"})),
    },
    "AllergyIntoleranceReaction": {"severity": ("reaction-event-severity", frozenset({"mild", "moderate", "severe"}))},
    "DocumentReference": {
        "status": ("document-reference-status", frozenset({"current", "superseded", "entered-in-error"})),
        "docStatus": ("composition-status", frozenset({"preliminary", "final", "amended", "entered-in-error"})),
    },
    "DocumentReferenceRelatesTo": {
        "code": ("document-relationship-type", frozenset({"replaces", "transforms", "signs", "appends"}))
    },
    "ContactPoint": {
        "system": ("contact-point-system", frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})),
        "use": ("contact-point-use", frozenset({"home", "work", "temp", "old", "mobile"})),
    },
    "HumanName": {
        "use": ("name-use", frozenset({"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"}))
    },
    "Address": {
        "use": ("address-use", frozenset({"home", "work", "temp", "old", "billing"})),
        "type": ("address-type", frozenset({"postal", "physical", "both"})),
    },
    "Identifier": {"use": ("identifier-use", frozenset({"usual", "official", "temp", "secondary", "old"}))},
    "Quantity": {"comparator": ("quantity-comparator", frozenset({"<", "<=", ">=", ">"}))},
    "Narrative": {"status": ("narrative-status", frozenset({"generated", "extensions", "additional", "empty"}))},
}

_TERMINOLOGY = "http://terminology.hl7.org/CodeSystem/"
# FHIR type -> CodeableConcept element -> (code system, codes): a coding from that system must be present and use
# one of the codes (a required binding on a CodeableConcept).
CONCEPT_BINDINGS: Final[dict[str, dict[str, tuple[str, frozenset[str]]]]] = {
    "AllergyIntolerance": {
        "clinicalStatus": (_TERMINOLOGY + "allergyintolerance-clinical", frozenset({"active", "inactive", "resolved"})),
        "verificationStatus": (
            _TERMINOLOGY + "allergyintolerance-verification",
            frozenset({"unconfirmed", "confirmed", "refuted", "entered-in-error"}),
        ),
    },
    "Condition": {
        "clinicalStatus": (
            _TERMINOLOGY + "condition-clinical",
            frozenset({"active", "recurrence", "relapse", "inactive", "remission", "resolved"}),
        ),
        "verificationStatus": (
            _TERMINOLOGY + "condition-ver-status",
            frozenset({"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}),
        ),
    },
}

SUPPORTED_BINDING_TYPES: Final[frozenset[str]] = frozenset(
    (CODE_BINDINGS.keys() | CONCEPT_BINDINGS.keys()) & R4_RESOURCE_TYPES
)
"""Resource types with their own rows in our binding tables: Patient, Observation, AllergyIntolerance, Condition,
DocumentReference, and the gender of Practitioner, RelatedPerson and Person. The data-type rows (ContactPoint,
HumanName, Address, Identifier, Quantity and its profiles, Narrative) apply in every resource type."""
