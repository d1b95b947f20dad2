"""The one definition of FHIR R4 resource type names, logical ids and version ids (FHIR R4 §2.1.27.2, ``id``).

Every check of a type, an id, a ``Type/id`` reference or a version id builds on these patterns, so the request
model, the validator, the FHIR client and the OpenAPI document agree on what is allowed.
"""

from __future__ import annotations

import re

RESOURCE_TYPE = r"[A-Z][A-Za-z]{1,63}"
# Dots alone ('.', '..') would be path segments, so an id of only dots is refused.
LOGICAL_ID = r"(?!\.+$)[A-Za-z0-9\-.]{1,64}"
VERSION_ID = r"[A-Za-z0-9\-.]{1,64}"
RESOURCE_REF = rf"(?P<type>{RESOURCE_TYPE})/(?P<id>{LOGICAL_ID})"

RESOURCE_TYPE_RE = re.compile(rf"^{RESOURCE_TYPE}$")
LOGICAL_ID_RE = re.compile(rf"^{LOGICAL_ID}$")
VERSION_ID_RE = re.compile(rf"^{VERSION_ID}$")
RESOURCE_REF_RE = re.compile(rf"^{RESOURCE_REF}$")
