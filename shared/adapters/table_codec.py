"""Encoding shared by the Table Storage adapters: key escaping, JSON split over properties, paging tokens."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from shared.core.errors import Issue, RequestError

# Table keys may not hold / \ # ? or control characters; '%' is escaped too so the mapping can be reversed.
_UNSAFE_KEY_CHARS = re.compile(r"[%/\\#?\x00-\x1f\x7f-\x9f]")

# A string property holds at most 64 KiB as UTF-16, i.e. 32,768 code units; stay well under.
CHUNK_CHARS = 30_000
DATA_PREFIX = "Data"


def escape_key(value: str) -> str:
    return _UNSAFE_KEY_CHARS.sub(lambda m: f"%{ord(m.group()):02X}", value)


def unescape_key(value: str) -> str:
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def pack_json(obj: Any) -> dict[str, str]:
    """Spread a JSON document over ``Data0``, ``Data1``, ... so it fits Table property limits."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    return {f"{DATA_PREFIX}{i}": chunk for i, chunk in enumerate(chunks)}


def unpack_json(entity: dict[str, Any]) -> Any:
    parts: list[str] = []
    i = 0
    while f"{DATA_PREFIX}{i}" in entity:
        parts.append(str(entity[f"{DATA_PREFIX}{i}"]))
        i += 1
    return json.loads("".join(parts))


def encode_token(token: dict[str, Any] | None) -> str | None:
    if not token:
        return None
    raw = json.dumps(token, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str | None) -> dict[str, Any] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_token() from exc
    if not isinstance(value, dict):
        raise _bad_token()
    return value


def odata_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _bad_token() -> RequestError:
    return RequestError(
        "continuation token is not one this service issued",
        issues=[Issue("continuationToken", "invalid", "not a continuation token issued by this service")],
    )
