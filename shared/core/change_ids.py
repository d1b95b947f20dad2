"""Change ids: UUID version 7 (RFC 9562), so that their text sorts by the time they were taken.

The changes table is partitioned by change id; time-ordered ids let the outbox sweeper read a narrow key range of
recent changes instead of the whole table. Clients must still treat the id as opaque.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

_VERSION = 7
_VARIANT = 0b10


def _millis(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("change ids need a timezone-aware time")
    return int(at.timestamp() * 1000)


def new_change_id(at: datetime) -> str:
    """A new id whose first 48 bits are ``at`` in Unix milliseconds, then 74 random bits."""
    value = (_millis(at) & (2**48 - 1)) << 80
    value |= _VERSION << 76 | secrets.randbits(12) << 64
    value |= _VARIANT << 62 | secrets.randbits(62)
    return str(uuid.UUID(int=value))


def change_id_floor(at: datetime) -> str:
    """A key no greater than any id taken at or after ``at``, and greater than any taken before it."""
    return str(uuid.UUID(int=(max(_millis(at), 0) & (2**48 - 1)) << 80))


def change_id_time(change_id: str) -> datetime | None:
    """When a version-7 id was taken; None for any other id (older uuid4 ids, ids from tests)."""
    try:
        parsed = uuid.UUID(change_id)
    except ValueError:
        return None
    if parsed.version != _VERSION or str(parsed) != change_id:
        return None
    return datetime.fromtimestamp((parsed.int >> 80) / 1000, tz=UTC)
