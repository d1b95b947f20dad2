"""The second layer of validation: the ``fhir.resources.R4B`` (pydantic) models, their errors as issues at FHIR paths.

They check structure, cardinality, required elements, choice types and the primitive formats; ``validate`` drops
their issues at a path the first layer (``walker``) already reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.core.errors import Issue
from shared.core.fhir_validation.element_tables import K_OBJ, K_RES, Schema, schema_for
from shared.core.fhir_validation.resource_types import resource_class
from shared.core.fhir_validation.syntax import SAFE_KEY

if TYPE_CHECKING:
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

__all__ = ["pydantic_issues"]

_REQUIRED_ERRORS = frozenset({"missing", "model_field_validation.missing"})
_STRUCTURE_ERRORS = frozenset({"extra_forbidden", "json_invalid", "model_validation_format", "model_type"})


def _loc_to_path(root: str, model: type[FHIRAbstractModel], loc: tuple[int | str, ...], data: Any) -> str:
    """A FHIR element path for a pydantic error location, walking the input alongside the models."""
    path = root
    schema: Schema | None = schema_for(model)
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
            if SAFE_KEY.fullmatch(name) is None:
                break  # an element name not fit to show; the path stops at its parent
            path += f".{name}"
            field = schema.fields.get(name) if schema is not None else None
            node = node.get(name) if isinstance(node, dict) else None
            schema = field.schema() if field is not None and field.kind == K_OBJ else None
            pending_resource = field is not None and field.kind == K_RES
        if pending_resource and isinstance(node, dict):
            resource_type = node.get("resourceType")
            sub = resource_class(resource_type)[0] if isinstance(resource_type, str) else None
            schema = schema_for(sub) if sub is not None else None
            pending_resource = False
    return path


def pydantic_issues(root: str, model: type[FHIRAbstractModel], resource: dict[str, Any]) -> list[Issue]:
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
