"""Reference syntax: which ``Reference.reference`` strings are accepted, and why the others are refused."""

from __future__ import annotations

import re
from typing import Final

from shared.core.fhir_ids import RESOURCE_REF, VERSION_ID
from shared.core.fhir_validation.resource_types import R4_RESOURCE_TYPES
from shared.core.fhir_validation.syntax import BAD_CHARS, DANGEROUS_SCHEMES, SCHEME

__all__ = ["MAX_REFERENCE_LENGTH", "reference_problem"]

MAX_REFERENCE_LENGTH: Final = 4096

_HISTORY = rf"(?:/_history/{VERSION_ID})?"
_RELATIVE_REF = re.compile(RESOURCE_REF + _HISTORY)  # Type/id[/_history/vid]
_ABSOLUTE_REF = re.compile(
    r"https?://[A-Za-z0-9\-.]{1,253}(?::[0-9]{1,5})?(?:/[A-Za-z0-9\-._~]{1,200})*?/" + RESOURCE_REF + _HISTORY
)
_DOT_SEGMENT = re.compile(r"(?:^|/)\.+(?:/|$)")  # '.', '..' (or more dots) as a whole path segment
_REF_FORBIDDEN = re.compile(r"[\s\\%]")
_LOCAL_REF = re.compile(r"#[A-Za-z0-9\-.]{0,64}")
_UUID_REF = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_OID_REF = re.compile(r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]{0,30})){1,64}")


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
    scheme = SCHEME.match(compact)
    if scheme is not None and scheme.group(1).lower() in DANGEROUS_SCHEMES:
        return "security", f"The reference scheme '{scheme.group(1).lower()}:' is not allowed"
    if _REF_FORBIDDEN.search(ref) is not None or BAD_CHARS.search(ref) is not None:
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
