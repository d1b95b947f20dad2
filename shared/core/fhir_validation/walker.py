"""The first layer of validation: one pass over the resource's JSON, guided by the element tables.

It checks JSON value types (``"true"`` for a boolean, ``"2"`` for an integer, a string where an object belongs),
unknown, null and empty elements, ``id`` syntax, ``reference`` syntax (``references``), narrative (XHTML) safety
(``narrative``), control characters, URI schemes, base64 content, and the required code bindings (``bindings``).
fhir.resources accepts all of these (it coerces JSON types and parses strings as JSON objects). Paths are only built
for objects and for issues, so valid primitives cost no strings.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from shared.core.errors import Issue
from shared.core.fhir_ids import LOGICAL_ID_RE
from shared.core.fhir_validation.element_tables import (
    K_B64,
    K_BOOL,
    K_DEC,
    K_ID,
    K_INT,
    K_OBJ,
    K_REF,
    K_RES,
    K_STR,
    K_URI,
    K_XHTML,
    Field,
    Schema,
    schema_for,
)
from shared.core.fhir_validation.narrative import narrative_problems
from shared.core.fhir_validation.references import reference_problem
from shared.core.fhir_validation.resource_types import resource_class
from shared.core.fhir_validation.syntax import BAD_CHARS, DANGEROUS_SCHEMES, SAFE_KEY, SCHEME

__all__ = ["MAX_DEPTH", "MAX_ISSUES", "TooManyIssuesError", "Walker"]

MAX_ISSUES: Final = 100
MAX_DEPTH: Final = 48  # JSON object nesting; pydantic's own recursion overflows at roughly 125 levels
_WHITESPACE = re.compile(r"\s")


class TooManyIssuesError(Exception):
    pass


class _Scope:
    """One resource and its contained resources: the ids they declare and the ``#local`` references made."""

    __slots__ = ("contained_ids", "local_refs")

    def __init__(self) -> None:
        self.contained_ids: set[str] = set()
        self.local_refs: list[tuple[str, str]] = []


def _at(path: str, key: str, index: int) -> str:
    return f"{path}.{key}" if index < 0 else f"{path}.{key}[{index}]"


class Walker:
    """One pass over the JSON. Paths are only built for objects and for issues: valid primitives cost no strings."""

    __slots__ = ("issues", "too_deep")

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.too_deep = False

    def add(self, path: str, code: str, message: str) -> None:
        self.issues.append(Issue(path, code, message))
        if len(self.issues) > MAX_ISSUES:
            raise TooManyIssuesError

    def resource(self, node: Mapping[str, Any], path: str, depth: int, scope: _Scope | None) -> None:
        resource_type = node.get("resourceType")
        if not isinstance(resource_type, str):
            self.add(f"{path}.resourceType", "required", "A resource needs a string resourceType")
            return
        model, problem = resource_class(resource_type)
        if model is None:
            self.add(f"{path}.resourceType", "not-supported", problem)
            return
        own_scope = scope is None
        if scope is None:
            scope = _Scope()
        self.element(node, schema_for(model), path, depth, scope)
        if own_scope:
            for ref_path, local_id in scope.local_refs:
                if local_id and local_id not in scope.contained_ids:
                    self.add(ref_path, "value", "Local reference does not match the id of any contained resource")

    def element(self, node: Mapping[str, Any], schema: Schema, path: str, depth: int, scope: _Scope) -> None:
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
                if isinstance(key, str) and SAFE_KEY.fullmatch(key):
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

    def primitive(self, field: Field, value: Any, path: str, key: str, index: int, scope: _Scope) -> None:
        kind = field.kind
        if kind <= K_B64:  # the string kinds
            if not isinstance(value, str):
                self.add(_at(path, key, index), "structure", f"Must be a JSON string ({field.fhir_type})")
            elif not value:
                self.add(_at(path, key, index), "value", "Empty strings are not allowed; omit the element instead")
            elif BAD_CHARS.search(value) is not None:
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
                    scheme = SCHEME.match(value)
                    if scheme is not None and scheme.group(1).lower() in DANGEROUS_SCHEMES:
                        message = f"The URI scheme '{scheme.group(1).lower()}:' is not allowed"
                        self.add(_at(path, key, index), "security", message)
            elif kind == K_ID:
                if LOGICAL_ID_RE.fullmatch(value) is None:
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

    def complex(self, field: Field, value: Any, path: str, depth: int, scope: _Scope, contained: bool) -> None:
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

    def _choices(self, node: Mapping[str, Any], schema: Schema, path: str) -> None:
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
        self, node: Mapping[str, Any], key: str, values: list[Any], field: Field, path: str
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
