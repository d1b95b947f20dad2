"""Swagger 2.0 definitions generated from pydantic models, so the OpenAPI document states the validation's own rules.

Pydantic emits JSON Schema (draft 2020-12). A Swagger 2.0 schema object is an older, smaller dialect: no ``anyOf``,
``oneOf`` or ``const``, no ``null`` type, no ``$defs``, one ``example`` rather than ``examples``, and patterns in
ECMA 262 syntax. ``swagger_definitions`` translates what the request models use:

- ``Optional[X]`` (``anyOf: [X, null]``) becomes ``X``; being optional is said by ``required`` alone;
- ``Literal[...]`` and enums become ``enum`` (``const`` too); an enum class is written inline, where Power Automate
  shows it;
- nested models are hoisted from ``$defs`` into ``definitions`` and referenced there;
- pydantic's generated ``title`` and a ``null`` default are left out; ``x-`` extensions are kept;
- a Python named group, ``(?P<name>...)``, is written as a plain group;
- a description taken from a docstring has its wrapped lines joined (paragraphs stay apart).

Anything else (a keyword Swagger 2.0 lacks, a union of two types) raises ``UnsupportedSchemaError``: a model that needs
more than this fails the document's tests rather than being documented wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

Schema = dict[str, Any]

REF_PREFIX = "#/definitions/"
EXTENSION_PREFIX = "x-"

# The keywords kept, in the order they are written; extensions other than x-ms-summary follow ``description``.
KEYWORD_ORDER = (
    "$ref",
    "type",
    "format",
    "enum",
    "default",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "items",
    "x-ms-summary",
    "description",
    "required",
    "additionalProperties",
    "example",
    "properties",
)
DROPPED = frozenset({"title"})
NAMED_GROUP = re.compile(r"\(\?P<\w+>")
WRAPPED_LINE_BREAK = re.compile(r"(?<!\n)\n(?!\n)")


class _AsDeclared(GenerateJsonSchema):
    """Pydantic's generator, but keeping keys as declared (an example reads in the order it was written)."""

    def sort(self, value: JsonSchemaValue, parent_key: str | None = None) -> JsonSchemaValue:
        return value


class UnsupportedSchemaError(ValueError):
    """A JSON Schema construct that has no Swagger 2.0 equivalent."""


def swagger_definitions(models: Mapping[str, type[BaseModel]]) -> dict[str, Schema]:
    """The definitions of ``models``, each under the name it is given, and of the models they nest (nested first)."""
    definitions: dict[str, Schema] = {}
    for name, model in models.items():
        schema = model.model_json_schema(
            by_alias=True, ref_template=REF_PREFIX + "{model}", schema_generator=_AsDeclared
        )
        nested = schema.pop("$defs", {})
        for nested_name, nested_schema in nested.items():
            if _is_object(nested_schema):
                _add(definitions, nested_name, _convert(nested_schema, nested))
        _add(definitions, name, _convert(schema, nested))
    return definitions


def _add(definitions: dict[str, Schema], name: str, schema: Schema) -> None:
    if definitions.setdefault(name, schema) != schema:
        raise UnsupportedSchemaError(f"two different models are both named {name}")


def _is_object(schema: Schema) -> bool:
    return schema.get("type") == "object"


def _convert(schema: Schema, nested: Mapping[str, Schema]) -> Schema:
    """``schema`` as a Swagger 2.0 schema object; ``nested`` holds the ``$defs`` its references point into."""
    schema = _without_noise(schema)
    if "$ref" in schema:
        return _convert_reference(schema, nested)
    if "anyOf" in schema:
        return _convert_optional(schema, nested)
    out: Schema = {}
    for keyword, value in schema.items():
        if keyword == "examples":
            out["example"] = value[0]
        elif keyword == "const":
            out["enum"] = [value]
        elif keyword == "properties":
            out[keyword] = {name: _convert(prop, nested) for name, prop in value.items()}
        elif keyword in ("items", "additionalProperties") and isinstance(value, dict):
            out[keyword] = _convert(value, nested)
        elif keyword == "pattern":
            out[keyword] = NAMED_GROUP.sub("(", value)
        elif keyword == "description":
            out[keyword] = WRAPPED_LINE_BREAK.sub(" ", value)
        elif keyword in KEYWORD_ORDER or keyword.startswith(EXTENSION_PREFIX):
            out[keyword] = value
        else:
            raise UnsupportedSchemaError(f"Swagger 2.0 has no {keyword!r}")
    return _ordered(out)


def _without_noise(schema: Schema) -> Schema:
    """Without pydantic's titles (made from the field names) and without a ``null`` default."""
    return {k: v for k, v in schema.items() if k not in DROPPED and not (k == "default" and v is None)}


def _convert_reference(schema: Schema, nested: Mapping[str, Schema]) -> Schema:
    """A reference to a nested model stays a reference; one to an enum is replaced by the enum, with the field's
    own keywords (Swagger 2.0 ignores whatever stands beside a ``$ref``)."""
    ref = schema["$ref"]
    field_keywords = {k: v for k, v in schema.items() if k != "$ref"}
    target = nested[ref.removeprefix(REF_PREFIX)]
    if not _is_object(target):
        return _convert({**target, **field_keywords}, nested)
    if field_keywords:
        raise UnsupportedSchemaError(f"Swagger 2.0 ignores {sorted(field_keywords)} beside a $ref to {ref}")
    return {"$ref": ref}


def _convert_optional(schema: Schema, nested: Mapping[str, Schema]) -> Schema:
    """``anyOf: [X, null]`` (with the field's own keywords beside it) as ``X`` with those keywords."""
    alternatives = [s for s in schema["anyOf"] if s != {"type": "null"}]
    if len(alternatives) != 1:
        raise UnsupportedSchemaError(f"Swagger 2.0 has no union of {alternatives}")
    field_keywords = {k: v for k, v in schema.items() if k != "anyOf"}
    return _convert({**alternatives[0], **field_keywords}, nested)


def _ordered(schema: Schema) -> Schema:
    def rank(keyword: str) -> float:
        if keyword in KEYWORD_ORDER:
            return KEYWORD_ORDER.index(keyword)
        return KEYWORD_ORDER.index("description") + 0.5

    return dict(sorted(schema.items(), key=lambda item: rank(item[0])))
