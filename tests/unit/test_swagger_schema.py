"""The request bodies' Swagger 2.0 definitions are generated from their pydantic models, and say what they validate."""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from shared.api.openapi import REQUEST_BODIES, openapi_document
from shared.api.swagger_schema import UnsupportedSchemaError, swagger_definitions
from shared.core.models import ChangeRequest

NOT_IN_SWAGGER_2 = {"anyOf", "oneOf", "const", "$defs", "examples", "title"}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_request_definitions_are_the_models() -> None:
    definitions = openapi_document()["definitions"]
    for name, model in REQUEST_BODIES.items():
        schema = definitions[name]
        fields = model.model_fields
        assert list(schema["properties"]) == [f.alias or n for n, f in fields.items()]
        assert schema.get("required", []) == [f.alias or n for n, f in fields.items() if f.is_required()]
        assert ("additionalProperties" in schema) == (model.model_config.get("extra") == "forbid")
    assert definitions["ChangeRequest"]["properties"]["patch"]["items"] == {"$ref": "#/definitions/PatchOperation"}


def test_the_request_definitions_use_only_swagger_2() -> None:
    definitions = swagger_definitions(REQUEST_BODIES)
    for schema in walk(definitions):
        assert not NOT_IN_SWAGGER_2 & set(schema), schema
        assert schema.get("type") != "null"


def test_every_field_has_a_connector_summary() -> None:
    for name, schema in swagger_definitions(REQUEST_BODIES).items():
        for prop, field in schema["properties"].items():
            assert field.get("x-ms-summary"), (name, prop)


def test_the_change_request_example_is_valid() -> None:
    example = openapi_document()["definitions"]["ChangeRequest"]["example"]
    assert ChangeRequest.model_validate(example).resource_ref == "Patient/123"


@pytest.mark.parametrize(
    "ref", ["Patient/123", "Patient/a.b-c", "Patient/..", "Patient/.", "patient/1", "P/1", "Patient/", "Patient/1/2"]
)
def test_the_resource_ref_pattern_agrees_with_validation(ref: str) -> None:
    pattern = openapi_document()["definitions"]["ChangeRequest"]["properties"]["resourceRef"]["pattern"]
    body = {"target": "t", "operation": "patch", "resourceRef": ref, "patch": [{"op": "remove", "path": "/a"}]}
    try:
        ChangeRequest.model_validate(body)
        valid = True
    except ValidationError:
        valid = False
    assert (re.search(pattern, ref) is not None) == valid


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Inner(BaseModel):
    """A nested model: hoisted into the definitions."""

    n: int = Field(ge=1, le=9)


class Outer(BaseModel):
    """Its wrapped
    lines are joined.

    Its paragraphs are not."""

    colour: Colour = Field(description="A colour.", json_schema_extra={"x-ms-summary": "Colour"})
    kind: Literal["only"] = "only"
    note: str | None = Field(default=None, max_length=5, examples=["hello"])
    code: str = Field(pattern=r"^(?P<head>[A-Z])\d$")
    inners: list[Inner] | None = None


def test_optionals_enums_and_nested_models() -> None:
    definitions = swagger_definitions({"Outer": Outer})
    assert list(definitions) == ["Inner", "Outer"]
    assert definitions["Inner"] == {
        "type": "object",
        "description": "A nested model: hoisted into the definitions.",
        "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
    }
    outer = definitions["Outer"]
    assert outer["description"] == "Its wrapped lines are joined.\n\nIts paragraphs are not."
    assert outer["required"] == ["colour", "code"]
    assert outer["properties"] == {
        "colour": {"type": "string", "enum": ["red", "blue"], "x-ms-summary": "Colour", "description": "A colour."},
        "kind": {"type": "string", "enum": ["only"], "default": "only"},
        "note": {"type": "string", "maxLength": 5, "example": "hello"},
        "code": {"type": "string", "pattern": r"^([A-Z])\d$"},
        "inners": {"type": "array", "items": {"$ref": "#/definitions/Inner"}},
    }


class Either(BaseModel):
    value: int | str


class Exclusive(BaseModel):
    value: int = Field(gt=0)


class Described(BaseModel):
    inner: Inner = Field(description="Swagger 2.0 would ignore this beside the $ref.")


@pytest.mark.parametrize("model", [Either, Exclusive, Described])
def test_what_swagger_2_cannot_say_is_refused(model: type[BaseModel]) -> None:
    with pytest.raises(UnsupportedSchemaError):
        swagger_definitions({model.__name__: model})


def test_two_models_of_one_name_are_refused() -> None:
    class Inner(BaseModel):
        other: str

    class Holder(BaseModel):
        inner: Inner

    with pytest.raises(UnsupportedSchemaError):
        swagger_definitions({"Outer": Outer, "Holder": Holder})
