"""The FHIR R4 resource types, and the ``fhir.resources`` R4B model class that validates each.

R4B (4.3.0) is the closest model set to R4 (4.0.1) in fhir.resources 8.x. Resource types that R4B added, or that it
changed beyond recognition (Evidence, EvidenceVariable), and R4 types it lacks, are refused as not supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

__all__ = ["R4B_ONLY", "R4_RESOURCE_TYPES", "resource_class"]

R4_RESOURCE_TYPES: Final = frozenset(
    """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic
    Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry
    ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication
    CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage
    CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric
    DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
    Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceVariable
    ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse
    HealthcareService ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide
    InsurancePlan Invoice Library Linkage List Location Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement
    MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
    MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
    MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition MessageHeader
    MolecularSequence NamingSystem NutritionOrder Observation ObservationDefinition OperationDefinition
    OperationOutcome Organization OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation
    Person PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse
    RelatedPerson RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
    RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
    StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid SubstancePolymer SubstanceProtein
    SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task
    TerminologyCapabilities TestReport TestScript ValueSet VerificationResult VisionPrescription
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)
"""The 146 resource types of FHIR R4 (4.0.1)."""

# R4 types that R4B dropped, and the two it rebuilt: R4B cannot validate them as R4.
_R4_NOT_IN_R4B: Final = frozenset(
    {t for t in R4_RESOURCE_TYPES if t.startswith(("MedicinalProduct", "Substance")) and t != "Substance"}
    | {"EffectEvidenceSynthesis", "RiskEvidenceSynthesis", "Evidence", "EvidenceVariable"}
)
# Types R4B added; they are not R4.
R4B_ONLY: Final = frozenset(
    """
    AdministrableProductDefinition Citation ClinicalUseDefinition EvidenceReport Ingredient
    ManufacturedItemDefinition MedicinalProductDefinition NutritionProduct PackagedProductDefinition
    RegulatedAuthorization SubscriptionStatus SubscriptionTopic SubstanceDefinition
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)

_RESOURCE_CLASSES: dict[str, type[FHIRAbstractModel]] = {}


def resource_class(resource_type: str) -> tuple[type[FHIRAbstractModel] | None, str]:
    """The R4B model class for an R4 resource type, or ``None`` and why not. Arbitrary input is never imported."""
    model = _RESOURCE_CLASSES.get(resource_type)
    if model is not None:
        return model, ""
    if resource_type in R4B_ONLY:
        return None, f"{resource_type} is not a FHIR R4 resource type (it was added in R4B)"
    if resource_type not in R4_RESOURCE_TYPES:
        return None, "Unknown resource type"
    if resource_type in _R4_NOT_IN_R4B:
        return None, f"{resource_type} resources cannot be validated here (not supported)"
    from fhir.resources.R4B import get_fhir_model_class

    model = _RESOURCE_CLASSES[resource_type] = get_fhir_model_class(resource_type)
    return model, ""
