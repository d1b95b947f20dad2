"""FHIR R4 validation of a proposed resource.

Two layers, both reporting ``Issue(path, code, message)`` with a FHIR element path such as
``Patient.telecom[0].system``; ``code`` is a FHIR ``issue-type`` code (``structure``, ``required``, ``value``,
``invalid``, ``security``, ``code-invalid``, ``not-supported``, ``too-costly``):

1. Our own single pass over the JSON, guided by the element tables of the ``fhir.resources.R4B`` models:
   JSON value types (``"true"`` for a boolean, ``"2"`` for an integer, a string where an object belongs), unknown,
   null and empty elements, ``id`` syntax, ``reference`` syntax, narrative (XHTML) safety, control characters,
   URI schemes, base64 content, and the required code bindings in ``_CODE_BINDINGS`` / ``_CONCEPT_BINDINGS``.
   fhir.resources accepts all of these (it coerces JSON types and parses strings as JSON objects).
2. ``fhir.resources.R4B`` (pydantic) validation: structure, cardinality, required elements, choice types and the
   primitive formats. Its issues at a path the first layer already reported are dropped.

R4B (4.3.0) is the closest model set to R4 (4.0.1) in fhir.resources 8.x. Resource types that R4B added, or that it
changed beyond recognition (Evidence, EvidenceVariable), and R4 types it lacks, are refused as not supported.
Messages never echo element values (they may carry PHI).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from xml.parsers import expat

from shared.core.errors import FhirValidationError, Issue

if TYPE_CHECKING:
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

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

MAX_ISSUES: Final = 100
MAX_DEPTH: Final = 48  # JSON object nesting; pydantic's own recursion overflows at roughly 125 levels
MAX_REFERENCE_LENGTH: Final = 4096

# --- resource types -------------------------------------------------------------------------------------------

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
_R4B_ONLY: Final = frozenset(
    """
    AdministrableProductDefinition Citation ClinicalUseDefinition EvidenceReport Ingredient
    ManufacturedItemDefinition MedicinalProductDefinition NutritionProduct PackagedProductDefinition
    RegulatedAuthorization SubscriptionStatus SubscriptionTopic SubstanceDefinition
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)

# --- required code bindings ------------------------------------------------------------------------------------

_ADMINISTRATIVE_GENDER = ("administrative-gender", frozenset({"male", "female", "other", "unknown"}))

# FHIR type (resource, backbone element or data type, by its fhir.resources name) -> element -> (value set, codes).
# Data-type rows apply wherever the type appears (and to its profiles: Age, Count, Distance, Duration for Quantity).
_CODE_BINDINGS: Final[dict[str, dict[str, tuple[str, frozenset[str]]]]] = {
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
_CONCEPT_BINDINGS: Final[dict[str, dict[str, tuple[str, frozenset[str]]]]] = {
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
    (_CODE_BINDINGS.keys() | _CONCEPT_BINDINGS.keys()) & R4_RESOURCE_TYPES
)
"""Resource types with their own rows in our binding tables: Patient, Observation, AllergyIntolerance, Condition,
DocumentReference, and the gender of Practitioner, RelatedPerson and Person. The data-type rows (ContactPoint,
HumanName, Address, Identifier, Quantity and its profiles, Narrative) apply in every resource type."""

# --- syntax -----------------------------------------------------------------------------------------------------

_ID = re.compile(r"(?!\.+$)[A-Za-z0-9\-.]{1,64}")  # dots alone ('.', '..') would be path segments
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_SAFE_KEY = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_DANGEROUS_SCHEMES = frozenset({"javascript", "vbscript", "data", "file", "livescript", "mocha", "jar"})
_VID = r"(?:/_history/[A-Za-z0-9\-.]{1,64})?"
_RELATIVE_REF = re.compile(r"(?P<type>[A-Z][A-Za-z]{1,63})/[A-Za-z0-9\-.]{1,64}" + _VID)
_ABSOLUTE_REF = re.compile(
    r"https?://[A-Za-z0-9\-.]{1,253}(?::[0-9]{1,5})?(?:/[A-Za-z0-9\-._~]{1,200})*?"
    r"/(?P<type>[A-Z][A-Za-z]{1,63})/[A-Za-z0-9\-.]{1,64}" + _VID
)
_DOT_SEGMENT = re.compile(r"(?:^|/)\.+(?:/|$)")  # '.', '..' (or more dots) as a whole path segment
_REF_FORBIDDEN = re.compile(r"[\s\\%]")
_WHITESPACE = re.compile(r"\s")
_LOCAL_REF = re.compile(r"#[A-Za-z0-9\-.]{0,64}")
_UUID_REF = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OID_REF = re.compile(r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]{0,30})){1,64}")

# --- narrative (XHTML) ------------------------------------------------------------------------------------------

_XHTML_NS = "http://www.w3.org/1999/xhtml"
_XML_NS = "http://www.w3.org/XML/1998/namespace"
# The elements the FHIR validator allows in narrative (basic HTML formatting, tables, lists, links, images).
_NARRATIVE_ELEMENTS: Final = frozenset(
    """
    a abbr acronym address b bdo big blockquote br caption cite code col colgroup dd dfn div dl dt em h1 h2 h3 h4 h5
    h6 hr i img kbd li ol p pre q samp small span strong sub sup table tbody td tfoot th thead tr tt ul var map area
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)
_NARRATIVE_ATTRIBUTES: Final = frozenset(
    """
    title style class id lang dir accesskey tabindex href name src alt width height border align valign char charoff
    abbr axis headers scope rowspan colspan span summary cellspacing cellpadding rules frame start type value shape
    coords usemap nohref hreflang rel rev cite datetime nowrap
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)
_URL_ATTRIBUTES: Final = frozenset({"href", "src", "cite", "usemap"})
_SAFE_IMAGE_DATA = re.compile(r"data:image/(?:png|gif|jpeg|webp);base64,", re.IGNORECASE)
_STYLE_HAZARDS = ("expression(", "javascript:", "vbscript:", "url(", "behavior:", "-moz-binding", "@import", "\\")

# --- issue codes ------------------------------------------------------------------------------------------------

_ISSUE_TYPES: Final = frozenset(
    """
    invalid structure required value invariant security login unknown expired forbidden suppressed processing
    not-supported duplicate multiple-matches not-found deleted too-long code-invalid extension too-costly
    business-rule conflict transient lock-error no-store exception timeout incomplete throttled informational
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)
_REQUIRED_ERRORS = frozenset({"missing", "model_field_validation.missing"})
_STRUCTURE_ERRORS = frozenset({"extra_forbidden", "json_invalid", "model_validation_format", "model_type"})

# --- element tables built from the fhir.resources R4B models -----------------------------------------------------

# Element kinds; the order matters: the string kinds come first (up to K_B64), the primitives before K_OBJ.
(K_STR, K_URI, K_ID, K_REF, K_XHTML, K_B64, K_BOOL, K_INT, K_DEC, K_OBJ, K_RES, K_ANY) = range(12)
_PRIMITIVE_KINDS: Final = {
    "boolean": K_BOOL,
    "integer": K_INT,
    "unsignedInt": K_INT,
    "positiveInt": K_INT,
    "decimal": K_DEC,
    "uri": K_URI,
    "url": K_URI,
    "canonical": K_URI,
    "oid": K_URI,
    "uuid": K_URI,
    "id": K_ID,
    "xhtml": K_XHTML,
    "base64Binary": K_B64,
}


class _Field:
    __slots__ = ("_schema", "fhir_type", "is_list", "kind", "model", "primitive_ext")

    def __init__(self, kind: int, is_list: bool, fhir_type: str, model: type[FHIRAbstractModel] | None, alias: str):
        self.kind = kind
        self.is_list = is_list
        self.fhir_type = fhir_type
        self.model = model
        self.primitive_ext = alias.startswith("_")
        self._schema: _Schema | None = None

    def schema(self) -> _Schema:
        if self._schema is None:
            assert self.model is not None
            self._schema = _schema_for(self.model)
        return self._schema


class _Schema:
    __slots__ = (
        "choice_of",
        "codes",
        "concepts",
        "fields",
        "is_resource",
        "names",
        "required",
        "required_choices",
        "type_name",
    )

    def __init__(self, model: type[FHIRAbstractModel]) -> None:
        from fhir_core.types import FhirBase
        from fhir_core.utils import (
            determine_version_prefix_from_class,
            get_fhir_type_name,
            is_list_type,
            is_primitive_type,
        )

        prefix = determine_version_prefix_from_class(model)
        self.type_name: str = model.get_resource_type()
        self.is_resource: bool = model.has_resource_base()
        self.fields: dict[str, _Field] = {}
        self.names: dict[str, str] = {}  # python field name or JSON name -> JSON name
        for name, info in model.model_fields.items():
            alias = info.alias or name
            self.names[name] = alias
            self.names[alias] = alias
            if name == "fhir_comments":
                continue
            is_list = is_list_type(info)
            if is_primitive_type(info):
                try:
                    fhir_type = str(get_fhir_type_name(info, prefix))
                except ValueError:
                    fhir_type = "string"
                kind = _PRIMITIVE_KINDS.get(fhir_type, K_STR)
                if self.type_name == "Reference" and alias == "reference":
                    kind = K_REF
                self.fields[alias] = _Field(kind, is_list, fhir_type, None, alias)
                continue
            base = _fhir_base_in(info.annotation, FhirBase)
            if base is None:
                self.fields[alias] = _Field(K_ANY, is_list, "?", None, alias)
                continue
            sub = base.get_model_klass()
            sub_type = sub.get_resource_type()
            kind = K_RES if sub_type == "Resource" else K_OBJ
            self.fields[alias] = _Field(kind, is_list, sub_type, sub, alias)
        # Checked here because fhir.resources only checks them once every other element passed.
        blank = model.model_construct()
        self.required: list[tuple[str, str]] = [  # primitive elements with min 1: the value or its _extension
            (self.names[name], self.names.get(ext or "", "")) for name, ext in blank.get_required_fields()
        ]
        self.choice_of: dict[str, str] = {}  # JSON name -> its nnn[x] prefix
        self.required_choices: list[str] = []
        for prefix, names in blank.get_one_of_many_fields().items():
            self.choice_of.update((self.names[name], prefix) for name in names)
            if _choice_required(model, names[0]):
                self.required_choices.append(prefix)
        self.codes: dict[str, tuple[str, frozenset[str]]] = {}
        self.concepts: dict[str, tuple[str, frozenset[str]]] = {}
        for klass in reversed(model.__mro__):
            type_name = vars(klass).get("__resource_type__")
            if isinstance(type_name, str):
                self.codes.update(_CODE_BINDINGS.get(type_name, {}))
                self.concepts.update(_CONCEPT_BINDINGS.get(type_name, {}))


def _choice_required(model: type[FHIRAbstractModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and extra.get("one_of_many_required") is True


def _fhir_base_in(annotation: Any, fhir_base: type[Any]) -> Any:
    """The fhir_core ``FhirBase`` type inside a field annotation such as ``list[AddressType] | None``."""
    if isinstance(annotation, type) and issubclass(annotation, fhir_base):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _fhir_base_in(arg, fhir_base)
        if found is not None:
            return found
    return None


_SCHEMAS: dict[type[Any], _Schema] = {}
_RESOURCE_CLASSES: dict[str, type[FHIRAbstractModel]] = {}


def _schema_for(model: type[FHIRAbstractModel]) -> _Schema:
    schema = _SCHEMAS.get(model)
    if schema is None:
        schema = _SCHEMAS[model] = _Schema(model)
    return schema


def _resource_class(resource_type: str) -> tuple[type[FHIRAbstractModel] | None, str]:
    """The R4B model class for an R4 resource type, or ``None`` and why not. Arbitrary input is never imported."""
    model = _RESOURCE_CLASSES.get(resource_type)
    if model is not None:
        return model, ""
    if resource_type in _R4B_ONLY:
        return None, f"{resource_type} is not a FHIR R4 resource type (it was added in R4B)"
    if resource_type not in R4_RESOURCE_TYPES:
        return None, "Unknown resource type"
    if resource_type in _R4_NOT_IN_R4B:
        return None, f"{resource_type} resources cannot be validated here (not supported)"
    from fhir.resources.R4B import get_fhir_model_class

    model = _RESOURCE_CLASSES[resource_type] = get_fhir_model_class(resource_type)
    return model, ""


# --- the walk ---------------------------------------------------------------------------------------------------


class _TooManyIssuesError(Exception):
    pass


class _Scope:
    """One resource and its contained resources: the ids they declare and the ``#local`` references made."""

    __slots__ = ("contained_ids", "local_refs")

    def __init__(self) -> None:
        self.contained_ids: set[str] = set()
        self.local_refs: list[tuple[str, str]] = []


def _at(path: str, key: str, index: int) -> str:
    return f"{path}.{key}" if index < 0 else f"{path}.{key}[{index}]"


class _Walker:
    """One pass over the JSON. Paths are only built for objects and for issues: valid primitives cost no strings."""

    __slots__ = ("issues", "too_deep")

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.too_deep = False

    def add(self, path: str, code: str, message: str) -> None:
        self.issues.append(Issue(path, code, message))
        if len(self.issues) > MAX_ISSUES:
            raise _TooManyIssuesError

    def resource(self, node: Mapping[str, Any], path: str, depth: int, scope: _Scope | None) -> None:
        resource_type = node.get("resourceType")
        if not isinstance(resource_type, str):
            self.add(f"{path}.resourceType", "required", "A resource needs a string resourceType")
            return
        model, problem = _resource_class(resource_type)
        if model is None:
            self.add(f"{path}.resourceType", "not-supported", problem)
            return
        own_scope = scope is None
        if scope is None:
            scope = _Scope()
        self.element(node, _schema_for(model), path, depth, scope)
        if own_scope:
            for ref_path, local_id in scope.local_refs:
                if local_id and local_id not in scope.contained_ids:
                    self.add(ref_path, "value", "Local reference does not match the id of any contained resource")

    def element(self, node: Mapping[str, Any], schema: _Schema, path: str, depth: int, scope: _Scope) -> None:
        if depth > MAX_DEPTH:
            self.too_deep = True
            self.add(path, "too-costly", f"Elements are nested more than {MAX_DEPTH} levels deep")
            return
        for name, ext in schema.required:
            if name not in node and not node.get(ext):
                self.add(f"{path}.{name}", "required", "Required element is missing")
        if schema.choice_of:
            self._choices(node, schema, path)
        fields = schema.fields
        codes = schema.codes
        for key, value in node.items():
            field = fields.get(key)
            if field is None:
                if key == "resourceType" and schema.is_resource:
                    continue
                if isinstance(key, str) and _SAFE_KEY.fullmatch(key):
                    self.add(f"{path}.{key}", "structure", f"Unknown element '{key}' in {schema.type_name}")
                else:
                    self.add(path, "structure", f"Invalid element name in {schema.type_name}")
                continue
            if value is None:
                self.add(f"{path}.{key}", "structure", "null is not allowed here; omit the element instead")
                continue
            kind = field.kind
            if field.is_list:
                if not isinstance(value, list):
                    self.add(f"{path}.{key}", "structure", f"Must be a JSON array (of {field.fhir_type})")
                    continue
                if not value:
                    self.add(f"{path}.{key}", "structure", "Empty arrays are not allowed; omit the element instead")
                    continue
                if field.primitive_ext or (kind < K_OBJ and None in value):
                    self._primitive_array_pairing(node, key, value, field, path)
                if kind < K_OBJ:
                    for index, item in enumerate(value):
                        if item is not None:
                            self.primitive(field, item, path, key, index, scope)
                else:
                    contained = key == "contained"
                    for index, item in enumerate(value):
                        if item is not None:
                            self.complex(field, item, f"{path}.{key}[{index}]", depth, scope, contained)
                        elif not field.primitive_ext:
                            self.add(f"{path}.{key}[{index}]", "structure", "null is not allowed in this array")
            elif isinstance(value, list):
                self.add(f"{path}.{key}", "structure", f"Must be a single {field.fhir_type}, not an array")
                continue
            elif kind < K_OBJ:
                self.primitive(field, value, path, key, -1, scope)
            else:
                self.complex(field, value, f"{path}.{key}", depth, scope, False)
            if key in codes:
                self._code_binding(value, codes[key], path, key)
            if schema.concepts and key in schema.concepts:
                self._concept_binding(value, schema.concepts[key], f"{path}.{key}")

    def primitive(self, field: _Field, value: Any, path: str, key: str, index: int, scope: _Scope) -> None:
        kind = field.kind
        if kind <= K_B64:  # the string kinds
            if not isinstance(value, str):
                self.add(_at(path, key, index), "structure", f"Must be a JSON string ({field.fhir_type})")
            elif not value:
                self.add(_at(path, key, index), "value", "Empty strings are not allowed; omit the element instead")
            elif _BAD_CHARS.search(value) is not None:
                self.add(_at(path, key, index), "value", "Contains a control character or an invalid Unicode character")
            elif kind == K_STR:
                return
            elif kind == K_REF:
                problem = reference_problem(value)
                if problem is not None:
                    self.add(_at(path, key, index), *problem)
                elif value[0] == "#":
                    scope.local_refs.append((_at(path, key, index), value[1:]))
            elif kind == K_URI:
                if _WHITESPACE.search(value) is not None:
                    self.add(_at(path, key, index), "value", "A URI cannot contain whitespace")
                else:
                    scheme = _SCHEME.match(value)
                    if scheme is not None and scheme.group(1).lower() in _DANGEROUS_SCHEMES:
                        message = f"The URI scheme '{scheme.group(1).lower()}:' is not allowed"
                        self.add(_at(path, key, index), "security", message)
            elif kind == K_ID:
                if _ID.fullmatch(value) is None:
                    message = "An id is 1-64 characters of A-Z, a-z, 0-9, '-' and '.'"
                    self.add(_at(path, key, index), "value", message)
            elif kind == K_XHTML:
                for code, message in narrative_problems(value):
                    self.add(_at(path, key, index), code, message)
            elif kind == K_B64 and not _is_base64(value):
                self.add(_at(path, key, index), "value", "Not valid base64 content")
        elif kind == K_BOOL:
            if not isinstance(value, bool):
                self.add(_at(path, key, index), "structure", f"Must be a JSON boolean ({field.fhir_type})")
        elif kind == K_INT:
            if type(value) is not int:
                self.add(_at(path, key, index), "structure", f"Must be a JSON integer ({field.fhir_type})")
        elif kind == K_DEC and (isinstance(value, bool) or not isinstance(value, (int, float, Decimal))):
            self.add(_at(path, key, index), "structure", f"Must be a JSON number ({field.fhir_type})")

    def complex(self, field: _Field, value: Any, path: str, depth: int, scope: _Scope, contained: bool) -> None:
        if field.kind == K_OBJ:
            if not isinstance(value, dict):
                self.add(path, "structure", f"Must be a JSON object ({field.fhir_type})")
            elif not value:
                self.add(path, "structure", "Empty objects are not allowed; omit the element instead")
            else:
                self.element(value, field.schema(), path, depth + 1, scope)
        elif field.kind == K_RES:
            if not isinstance(value, dict):
                self.add(path, "structure", "Must be a JSON object (a resource)")
            elif contained:
                if "contained" in value:
                    self.add(f"{path}.contained", "structure", "A contained resource cannot contain resources")
                local_id = value.get("id")
                if isinstance(local_id, str):
                    scope.contained_ids.add(local_id)
                self.resource(value, path, depth + 1, scope)
            else:
                self.resource(value, path, depth + 1, None)

    def _choices(self, node: Mapping[str, Any], schema: _Schema, path: str) -> None:
        """``nnn[x]``: at most one of its elements, and one when the element is required."""
        present: dict[str, int] = {}
        for key in node:
            prefix = schema.choice_of.get(key)
            if prefix is not None:
                present[prefix] = present.get(prefix, 0) + 1
        for prefix, count in present.items():
            if count > 1:
                self.add(path, "structure", f"Only one of {prefix}[x] may be present")
        for prefix in schema.required_choices:
            if prefix not in present:
                self.add(path, "required", f"One of {prefix}[x] is required")

    def _primitive_array_pairing(
        self, node: Mapping[str, Any], key: str, values: list[Any], field: _Field, path: str
    ) -> None:
        """Nulls in a primitive array (or its ``_name`` twin) only hold a place for a value in the other one."""
        twin = node.get(key[1:] if field.primitive_ext else "_" + key)
        if field.primitive_ext and isinstance(twin, list) and len(twin) != len(values):
            self.add(f"{path}.{key}", "structure", f"Must have as many entries as '{key[1:]}'")
        for index, item in enumerate(values):
            if item is None and not (isinstance(twin, list) and index < len(twin) and twin[index] is not None):
                message = "null is only allowed to line up with the '_' twin array"
                self.add(f"{path}.{key}[{index}]", "structure", message)

    def _code_binding(self, value: Any, binding: tuple[str, frozenset[str]], path: str, key: str) -> None:
        value_set, codes = binding
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, str) and item and item not in codes:
                    self.add(f"{path}.{key}[{index}]", "code-invalid", _not_in(value_set, codes))
        elif isinstance(value, str) and value and value not in codes:
            self.add(f"{path}.{key}", "code-invalid", _not_in(value_set, codes))

    def _concept_binding(self, value: Any, binding: tuple[str, frozenset[str]], path: str) -> None:
        system, codes = binding
        if not isinstance(value, dict):
            return
        found = False
        codings = value.get("coding")
        if isinstance(codings, list):
            for index, coding in enumerate(codings):
                if isinstance(coding, dict) and coding.get("system") == system:
                    found = True
                    code = coding.get("code")
                    if isinstance(code, str) and code not in codes:
                        self.add(f"{path}.coding[{index}].code", "code-invalid", _not_in(system, codes))
        if not found:
            self.add(path, "code-invalid", f"Needs a coding from {system} (a required binding)")


def _is_base64(value: str) -> bool:
    data = "".join(value.split()) if _WHITESPACE.search(value) is not None else value
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _not_in(value_set: str, codes: frozenset[str]) -> str:
    return f"Code is not in the required value set {value_set} ({' | '.join(sorted(codes))})"


def reference_problem(ref: str) -> tuple[str, str] | None:
    """Why a ``Reference.reference`` string is refused, as ``(issue code, message)``, or ``None`` when it is fine.

    Accepted: ``Type/id`` (optionally ``/_history/vid``), ``#local``, ``urn:uuid:…``, ``urn:oid:…`` and
    ``http(s)://host[:port]/path/Type/id[/_history/vid]`` with a known R4 ``Type``.
    """
    relative = _RELATIVE_REF.fullmatch(ref)
    if relative is not None and relative.group("type") in R4_RESOURCE_TYPES and _DOT_SEGMENT.search(ref) is None:
        return None  # the common case, Type/id
    if not ref or len(ref) > MAX_REFERENCE_LENGTH:
        return "value", f"A reference is 1 to {MAX_REFERENCE_LENGTH} characters"
    compact = "".join(ref[:64].split())
    scheme = _SCHEME.match(compact)
    if scheme is not None and scheme.group(1).lower() in _DANGEROUS_SCHEMES:
        return "security", f"The reference scheme '{scheme.group(1).lower()}:' is not allowed"
    if _REF_FORBIDDEN.search(ref) is not None or _BAD_CHARS.search(ref) is not None:
        return "value", "A reference cannot contain whitespace, control characters, backslashes or %-encoding"
    after_scheme = ref.split("://", 1)[1] if scheme is not None and "://" in ref else ref
    if _DOT_SEGMENT.search(after_scheme) is not None or "//" in after_scheme:
        return "security", "A reference cannot contain path segments such as '..', '.' or '//'"
    if "?" in ref:
        return "value", "Conditional references (Type?search) are not supported"
    first = ref[0]
    if first == "#":
        if _LOCAL_REF.fullmatch(ref) is None:
            return "value", "A local reference is '#' followed by the id of a contained resource"
        return None
    if scheme is not None:
        name = scheme.group(1).lower()
        if name == "urn":
            if _UUID_REF.fullmatch(ref) is None and _OID_REF.fullmatch(ref) is None:
                return "value", "A urn reference must be urn:uuid:<uuid> or urn:oid:<oid>"
            return None
        if name not in ("http", "https"):
            return "value", f"The reference scheme '{name}:' is not supported"
        match = _ABSOLUTE_REF.fullmatch(ref)
    else:
        match = _RELATIVE_REF.fullmatch(ref)
    if match is None:
        return "value", "A reference must be Type/id, #id, urn:uuid:, urn:oid: or http(s)://server/Type/id"
    if match.group("type") not in R4_RESOURCE_TYPES:
        return "value", "The reference names an unknown resource type"
    return None


def narrative_problems(div: str) -> list[tuple[str, str]]:
    """Why a narrative ``div`` is refused, as ``(issue code, message)`` pairs; empty when it is safe XHTML.

    It must be one well-formed ``<div xmlns="http://www.w3.org/1999/xhtml">`` holding only the basic formatting
    elements and attributes FHIR allows (no script, style, iframe, object, embed, form, event handlers, or
    ``javascript:``/``data:`` URLs), with some content (txt-1, txt-2). No DTDs or entities are ever expanded.
    """
    lowered = div.lower()
    if "<!doctype" in lowered or "<!entity" in lowered or "<?" in div:
        return [("security", "Narrative cannot contain DOCTYPE, ENTITY declarations or processing instructions")]
    if not lowered.lstrip().startswith("<div"):
        return [("structure", _DIV_SHAPE)]
    checker = _NarrativeChecker()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = checker.start
    parser.CharacterDataHandler = checker.text
    parser.StartDoctypeDeclHandler = _refuse_declaration
    parser.EntityDeclHandler = _refuse_declaration
    parser.ExternalEntityRefHandler = _refuse_declaration
    try:
        parser.Parse(div, True)
    except expat.ExpatError as error:
        if error.code == expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY]:
            return [("structure", "Narrative uses an HTML entity; only &lt; &gt; &amp; &quot; &apos; and &#...; exist")]
        return [("structure", "Narrative is not well-formed XHTML")]
    except ValueError:
        return [("security", "Narrative cannot contain DOCTYPE or ENTITY declarations")]
    if checker.root is False:
        return [("structure", _DIV_SHAPE)]
    if not checker.has_content and not checker.problems:
        checker.problems.append(("value", "Narrative must have some non-whitespace content"))
    return checker.problems[:10]


_DIV_SHAPE = 'Narrative must be a <div xmlns="http://www.w3.org/1999/xhtml"> element'


def _refuse_declaration(*_: object) -> int:
    raise ValueError("declarations are not allowed in narrative")


class _NarrativeChecker:
    __slots__ = ("has_content", "problems", "root")

    def __init__(self) -> None:
        self.root: bool | None = None  # None before the first element, then whether it was an XHTML div
        self.has_content = False
        self.problems: list[tuple[str, str]] = []

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        namespace, _, local = tag.rpartition(" ")
        if self.root is None:
            self.root = namespace == _XHTML_NS and local == "div"
        if namespace != _XHTML_NS or local not in _NARRATIVE_ELEMENTS:
            self.problems.append(("security", f"Element <{local[:32]}> is not allowed in narrative"))
            return
        if local == "img":
            self.has_content = True
        for name, value in attributes.items():
            attr_namespace, _, attr_local = name.rpartition(" ")
            attr = attr_local.lower()
            if attr_namespace:
                if attr_namespace != _XML_NS or attr not in ("lang", "space"):
                    self.problems.append(("security", f"Attribute '{attr_local[:32]}' is not allowed in narrative"))
            elif attr.startswith("on"):
                self.problems.append(("security", f"Event handler attribute '{attr[:32]}' is not allowed in narrative"))
            elif attr not in _NARRATIVE_ATTRIBUTES:
                self.problems.append(("security", f"Attribute '{attr[:32]}' is not allowed in narrative"))
            elif attr in _URL_ATTRIBUTES:
                compact = "".join(c for c in value if c.isprintable() and not c.isspace())
                scheme = _SCHEME.match(compact)
                if (
                    scheme is not None
                    and scheme.group(1).lower() in _DANGEROUS_SCHEMES
                    and not (local == "img" and attr == "src" and _SAFE_IMAGE_DATA.match(compact))
                ):
                    self.problems.append(("security", f"The URL scheme '{scheme.group(1).lower()}:' is not allowed"))
            elif attr == "style":
                style = "".join(value.lower().split())
                if any(hazard in style for hazard in _STYLE_HAZARDS):
                    self.problems.append(("security", "The style attribute uses a construct that is not allowed"))

    def text(self, data: str) -> None:
        if not self.has_content and not data.isspace():
            self.has_content = True


# --- pydantic (fhir.resources) errors -----------------------------------------------------------------------------


def _loc_to_path(root: str, model: type[FHIRAbstractModel], loc: tuple[int | str, ...], data: Any) -> str:
    """A FHIR element path for a pydantic error location, walking the input alongside the models."""
    path = root
    schema: _Schema | None = _schema_for(model)
    node: Any = data
    pending_resource = False
    for part in loc:
        if isinstance(part, int):
            if not isinstance(node, list):
                continue
            path += f"[{part}]"
            node = node[part] if 0 <= part < len(node) else None
        else:
            if isinstance(node, dict) and part in node:
                name: str | None = part
            else:
                name = schema.names.get(part) if schema is not None else None
            if name is None:
                continue  # a pydantic internal: "root", union tags, function names
            if _SAFE_KEY.fullmatch(name) is None:
                break  # an element name not fit to show; the path stops at its parent
            path += f".{name}"
            field = schema.fields.get(name) if schema is not None else None
            node = node.get(name) if isinstance(node, dict) else None
            schema = field.schema() if field is not None and field.kind == K_OBJ else None
            pending_resource = field is not None and field.kind == K_RES
        if pending_resource and isinstance(node, dict):
            resource_type = node.get("resourceType")
            sub = _resource_class(resource_type)[0] if isinstance(resource_type, str) else None
            schema = _schema_for(sub) if sub is not None else None
            pending_resource = False
    return path


def _pydantic_issues(root: str, model: type[FHIRAbstractModel], resource: dict[str, Any]) -> list[Issue]:
    from pydantic import ValidationError

    try:
        model.model_validate(resource)
    except ValidationError as error:
        issues = []
        for detail in error.errors(include_url=False, include_input=False):
            kind = detail["type"]
            message = " ".join(str(detail["msg"]).split()).removeprefix("Value error, ")
            if kind in _REQUIRED_ERRORS:
                code = "required"
                message = "Required element is missing"
            elif kind in _STRUCTURE_ERRORS or kind.endswith("_type"):
                code = "structure"
                if kind == "extra_forbidden":
                    message = "Unknown element"
            else:
                code = "value"
            issues.append(Issue(_loc_to_path(root, model, tuple(detail["loc"]), resource), code, message))
        return issues
    except RecursionError:
        return [Issue(root, "too-costly", "The resource is nested too deeply to validate")]
    except Exception:  # fhir.resources raises e.g. KeyError for an unknown contained resourceType
        return [Issue(root, "invalid", "The resource could not be validated")]
    return []


# --- public API -------------------------------------------------------------------------------------------------


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
    if _RESOURCE_TYPE.fullmatch(resource_type) is None:
        return [Issue(f"{root}.resourceType", "not-supported", "Unknown resource type")]
    model, problem = _resource_class(resource_type)
    if model is None:
        known = resource_type in R4_RESOURCE_TYPES or resource_type in _R4B_ONLY
        return [Issue(f"{resource_type if known else root}.resourceType", "not-supported", problem)]

    walker = _Walker()
    complete = True
    try:
        walker.resource(resource, resource_type, 1, None)
    except _TooManyIssuesError:
        complete = False
    issues = walker.issues
    if complete and not walker.too_deep:
        seen = {issue.path for issue in issues}
        for issue in _pydantic_issues(resource_type, model, resource):
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
