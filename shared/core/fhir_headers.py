"""FHIR HTTP header values as the core needs them: versions from ``ETag`` / ``If-Match``, ``Retry-After`` in seconds.

Versions are opaque strings (never numbers): ``W/"abc"`` / ``"abc"`` / ``abc`` all mean version ``abc``.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from shared.core.errors import PermanentError


def parse_etag(value: str | None) -> str | None:
    """``W/"abc"`` / ``"abc"`` / ``abc`` → ``abc``; empty → None. Never converts to a number."""
    if value is None:
        return None
    v = value.strip()
    if v[:2] in ("W/", "w/"):
        v = v[2:].strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return v or None


def if_match_value(version: str) -> str:
    """The ``If-Match`` header for an opaque version id; an already-quoted ETag is normalised to ``W/"<vid>"``."""
    vid = parse_etag(version)
    if vid is None:
        raise PermanentError(detail="If-Match needs a non-empty version id")
    return f'W/"{vid}"'


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date (seconds from ``now``, at least 0)."""
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    try:
        seconds = float(v)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN check
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
