"""The FHIR R4 elements of a resource type (from fhirpathpy's R4 model), and the policy's rule keys checked on them.

Rule keys are ``Type.element`` (``Patient.telecom``), ``Type.element[x]`` for a choice element
(``Observation.value[x]``), a single choice variant (``Observation.valueQuantity``, more specific than
``Observation.value[x]``), an element of ``meta`` (``Observation.meta.security``, more specific than
``Observation.meta``) or ``*``. The type must be the resource type the rules sit under and the element must exist
in FHIR R4. ``meta.versionId`` and ``meta.lastUpdated`` are the server's: no rule can name them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from functools import cache
from typing import Any, Final

__all__ = [
    "SERVER_META_ELEMENTS",
    "governed_meta_elements",
    "r4_model",
    "rule_key_problem",
    "suggest",
    "top_level_elements",
]

SERVER_META_ELEMENTS: Final = frozenset({"versionId", "lastUpdated"})
"""The elements of ``meta`` the server sets on every write: outside the policy."""

_RULE_KEY = re.compile(
    r"^(?P<type>[A-Z][A-Za-z0-9]*)\.(?P<element>[a-z][A-Za-z0-9]*)(?:(?P<choice>\[x\])|\.(?P<sub>[A-Za-z0-9]+))?$"
)


def rule_key_problem(key: str, resource_type: str, elements: frozenset[str], choices: Mapping[str, Any]) -> str:
    """Why ``key`` is not a rule key of ``resource_type`` (given its ``top_level_elements``), or "" when it is."""
    if key == "*":
        return ""
    m = _RULE_KEY.match(key)
    if m is None:
        return f"'{key}' is not a rule path: write '{resource_type}.element', '{resource_type}.element[x]' or '*'"
    if m["type"] != resource_type:
        return f"'{key}' names {m['type']}, but these rules are for {resource_type}"
    element = m["element"]
    if m["sub"] is not None:
        return _meta_key_problem(key, resource_type, element, m["sub"])
    if m["choice"]:
        if element in choices:
            return ""
        if element in elements:
            return f"'{key}': {resource_type}.{element} is not a choice element; write '{resource_type}.{element}'"
    elif element in choices:
        variant = f"{resource_type}.{choices[element][0]}"
        return f"'{key}' is a choice element; write '{key}[x]' (or one variant, such as '{variant}')"
    elif element in elements:
        return ""
    known = elements | {f"{c}[x]" for c in choices}
    return f"{resource_type} has no element '{element}'{suggest(element, known)}"


def _meta_key_problem(key: str, resource_type: str, element: str, sub: str) -> str:
    if element != "meta":
        return f"'{key}' is not a rule path: only meta's elements have rules of their own ('{resource_type}.meta.tag')"
    if sub in SERVER_META_ELEMENTS:
        return f"'{key}': the server sets meta.{sub} on every write; no rule decides on it"
    known = governed_meta_elements()
    if sub in known:
        return ""
    return f"Meta has no element '{sub}'{suggest(sub, known)}"


def suggest(word: str, known: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` with the closest of ``known``, or "" when nothing is close."""
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@cache
def r4_model() -> dict[str, Any]:
    """fhirpathpy's FHIR R4 model (element paths and types, choice elements)."""
    from fhirpathpy.models import models

    model: dict[str, Any] = models["r4"]
    return model


@cache
def governed_meta_elements() -> frozenset[str]:
    """The elements of ``meta`` a caller may change, so the policy decides on: ``tag``, ``security``, ..."""
    names = frozenset(p.split(".", 1)[1] for p in r4_model()["path2Type"] if p.startswith("Meta."))
    return names - SERVER_META_ELEMENTS


@cache
def top_level_elements(resource_type: str) -> tuple[frozenset[str], dict[str, tuple[str, ...]]]:
    """Top-level element names of a resource type, and its choice elements with their variant names."""
    model = r4_model()
    prefix = resource_type + "."
    elements = frozenset(p[len(prefix) :].split(".", 1)[0] for p in model["path2Type"] if p.startswith(prefix))
    choices: dict[str, tuple[str, ...]] = {}
    for path, types in model["choiceTypePaths"].items():
        if path.startswith(prefix) and "." not in path[len(prefix) :]:
            base = path[len(prefix) :]
            choices[base] = tuple(f"{base}{t[0].upper()}{t[1:]}" for t in types)
    return elements, choices
