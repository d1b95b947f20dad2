"""Element tables built from the ``fhir.resources`` R4B models, one per FHIR type, built once and cached.

A table gives each element's JSON kind, whether it is a list and its FHIR type, and the type's required elements,
choice elements and the code bindings that apply to it (``bindings``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from shared.core.fhir_validation.bindings import CODE_BINDINGS, CONCEPT_BINDINGS

if TYPE_CHECKING:
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

__all__ = [
    "K_ANY",
    "K_B64",
    "K_BOOL",
    "K_DEC",
    "K_ID",
    "K_INT",
    "K_OBJ",
    "K_REF",
    "K_RES",
    "K_STR",
    "K_URI",
    "K_XHTML",
    "Field",
    "Schema",
    "schema_for",
]

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


class Field:
    """One element of a FHIR type: its JSON kind (``K_*``), list or not, FHIR type, and table when complex."""

    __slots__ = ("_schema", "fhir_type", "is_list", "kind", "model", "primitive_ext")

    def __init__(self, kind: int, is_list: bool, fhir_type: str, model: type[FHIRAbstractModel] | None, alias: str):
        self.kind = kind
        self.is_list = is_list
        self.fhir_type = fhir_type
        self.model = model
        self.primitive_ext = alias.startswith("_")
        self._schema: Schema | None = None

    def schema(self) -> Schema:
        if self._schema is None:
            assert self.model is not None
            self._schema = schema_for(self.model)
        return self._schema


class Schema:
    """The element table of one FHIR type (resource, backbone element or data type)."""

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
        self.fields: dict[str, Field] = {}
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
                self.fields[alias] = Field(kind, is_list, fhir_type, None, alias)
                continue
            base = _fhir_base_in(info.annotation, FhirBase)
            if base is None:
                self.fields[alias] = Field(K_ANY, is_list, "?", None, alias)
                continue
            sub = base.get_model_klass()
            sub_type = sub.get_resource_type()
            kind = K_RES if sub_type == "Resource" else K_OBJ
            self.fields[alias] = Field(kind, is_list, sub_type, sub, alias)
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
                self.codes.update(CODE_BINDINGS.get(type_name, {}))
                self.concepts.update(CONCEPT_BINDINGS.get(type_name, {}))


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


_SCHEMAS: dict[type[Any], Schema] = {}


def schema_for(model: type[FHIRAbstractModel]) -> Schema:
    schema = _SCHEMAS.get(model)
    if schema is None:
        schema = _SCHEMAS[model] = Schema(model)
    return schema
