"""Canonical JSON and its SHA-256: the one form the gateway hashes (request fingerprints, diff hashes).

Keys sorted, no spaces, UTF-8 text as is (``ensure_ascii=False``). Idempotency keys stored with a fingerprint in this
form must keep matching, so the form never changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_hash(value: Any) -> str:
    """SHA-256 (hex) of ``value``'s canonical JSON."""
    return sha256_hex(canonical_json(value))
