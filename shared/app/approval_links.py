"""Signed, expiring, single-use approve / reject tokens for approval notifications (Power Automate, Logic Apps).

A flow decides by posting one of the two tokens to ``CALLBACK_PATH`` in the ``X-Approval-Token`` header.

A token is ``<payload>.<signature>``, both unpadded base64url:

- ``payload`` is compact JSON ``{"c": change id, "d": "approve" | "reject", "e": expiry (Unix seconds),
  "k": key id, "n": nonce, "r": [round sequence, retries, diff hash (16 hex)]}`` (``r``: the approval round the
  token is for, see ``ApprovalRound``);
- ``signature`` is HMAC-SHA256 over the decoded payload bytes with the key named by ``k``.

Keys rotate: the signer holds ``{kid: key}``, signs with the current one and verifies with any it holds, so a
new key can be put first while links signed with the old one still work until they expire. The token carries
ids only (no PHI); the nonce makes each link single-use through an :class:`ApprovalNonceStore`, whose insert
that fails if the nonce is present is the atomic decision.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

from shared.core.errors import ConfigurationError, Issue, RequestError, UnauthenticatedError

Decision = Literal["approve", "reject"]

# One fixed path, so that App Service Authentication can exclude it exactly (its excludedPaths take exact paths or
# a trailing /*); the token travels in this header (or the JSON body), never in a URL that request logs keep.
CALLBACK_PATH = "/api/v1/callbacks/approval"
TOKEN_HEADER = "X-Approval-Token"  # noqa: S105 - a header name, not a secret

MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 1024
_KID = re.compile(r"^[A-Za-z0-9_\-]{1,32}$")
_NONCE = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
_B64URL = re.compile(r"^[A-Za-z0-9_\-]+$")
_DECISIONS: tuple[Decision, ...] = get_args(Decision)
_PAYLOAD_KEYS = frozenset({"c", "d", "e", "k", "n"})
_ROUND_KEY = "r"
_DIFF_HASH = re.compile(r"^[0-9a-f]{16,64}$")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ApprovalRound:
    """Which round of approval a token was issued for: the sequence of the round's ``awaiting_approval`` event, the
    change's retry count and the hash of the diff put to the approvers. A token of another round (a change planned
    again after a conflict, or retried) must not approve a diff nobody reviewed."""

    sequence: int
    retries: int
    diff_hash: str


@dataclass(frozen=True)
class ApprovalLinkClaims:
    """What a verified token says: the change, the decision it carries, when it expires, its single-use nonce, and
    the round it belongs to (None for a token signed before tokens carried it: no round matches it)."""

    change_id: str
    decision: Decision
    expires_at: datetime
    nonce: str
    kid: str
    round: ApprovalRound | None = None


class ApprovalNonceStore(Protocol):
    def use(self, nonce: str, change_id: str, expires_at: datetime) -> None:
        """Record the nonce as used; AlreadyExistsError if it was used before, with any change (insert-if-absent)."""
        ...

    def purge_expired(self, now: datetime) -> int:
        """Delete every nonce whose ``expires_at`` is before ``now``; return how many were deleted."""
        ...


def parse_signing_keys(text: str) -> dict[str, bytes]:
    """Parse ``WRITEBACK_APPROVAL_SIGNING_KEYS`` (``kid1:base64key1,kid2:base64key2``; the first is current).

    Errors name the entry by position and kid, never the key material.
    """
    setting = "WRITEBACK_APPROVAL_SIGNING_KEYS"
    keys: dict[str, bytes] = {}
    entries = [e.strip() for e in text.split(",")]
    if not text.strip() or not any(entries):
        raise ConfigurationError(f"{setting}: must list at least one 'kid:base64key'")
    for position, entry in enumerate(entries, start=1):
        kid, sep, encoded = entry.partition(":")
        kid, encoded = kid.strip(), encoded.strip()
        where = f"{setting}: entry {position}"
        if not sep or not kid or not encoded:
            raise ConfigurationError(f"{where}: must be 'kid:base64key'")
        if not _KID.match(kid):
            raise ConfigurationError(f"{where}: key id must be 1-32 letters, digits, '-' or '_'")
        if kid in keys:
            raise ConfigurationError(f"{where}: key id {kid!r} is listed twice")
        key = _decode_key(encoded)
        if key is None:
            raise ConfigurationError(f"{where} ({kid}): key is not valid base64")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigurationError(f"{where} ({kid}): key must be at least {MIN_KEY_BYTES} bytes")
        keys[kid] = key
    return keys


def _decode_key(encoded: str) -> bytes | None:
    """Standard or URL-safe base64, padding optional."""
    normalized = encoded.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        return None


class ApprovalLinkSigner:
    """Signs and verifies approval link tokens. ``keys`` is one key (kid ``"default"``) or ``{kid: key}``."""

    def __init__(
        self,
        keys: bytes | Mapping[str, bytes],
        *,
        current_kid: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        key_map = {"default": keys} if isinstance(keys, bytes) else dict(keys)
        if not key_map:
            raise ConfigurationError("approval links need at least one signing key")
        for kid, key in key_map.items():
            if not _KID.match(kid):
                raise ConfigurationError("approval signing key id must be 1-32 letters, digits, '-' or '_'")
            if len(key) < MIN_KEY_BYTES:
                raise ConfigurationError(f"approval signing key {kid!r} must be at least {MIN_KEY_BYTES} bytes")
        self._keys = key_map
        self._current = current_kid if current_kid is not None else next(iter(key_map))
        if self._current not in key_map:
            raise ConfigurationError(f"approval signing key {self._current!r} is not configured")
        self._clock = clock

    def __repr__(self) -> str:
        return f"ApprovalLinkSigner(kids={list(self._keys)!r}, current={self._current!r})"

    @property
    def current_kid(self) -> str:
        return self._current

    def sign(
        self,
        change_id: str,
        decision: Decision,
        expires_at: datetime,
        nonce: str | None = None,
        *,
        round: ApprovalRound | None = None,
    ) -> str:
        if not change_id:
            raise ValueError("change_id must not be empty")
        if decision not in _DECISIONS:
            raise ValueError(f"decision must be one of {_DECISIONS}")
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        nonce = secrets.token_urlsafe(16) if nonce is None else nonce
        if not _NONCE.match(nonce):
            raise ValueError("nonce must be 8-64 letters, digits, '-' or '_'")
        payload: dict[str, Any] = {
            "c": change_id,
            "d": decision,
            "e": int(expires_at.timestamp()),
            "k": self._current,
            "n": nonce,
        }
        if round is not None:
            payload[_ROUND_KEY] = [round.sequence, round.retries, round.diff_hash[:16]]
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
        token = f"{_b64encode(raw)}.{_b64encode(self._mac(self._keys[self._current], raw))}"
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("change_id is too long for an approval link")
        return token

    def verify(self, token: str, *, change_id: str | None = None) -> ApprovalLinkClaims:
        """Check shape (400), key id and signature (401), change id (401) and expiry (401 "link expired").

        Claims are read only after the signature matched; the change id and the expiry are checked after it,
        so "link expired" is only ever said about a token this gateway signed.
        """
        raw, signature, body = _parse(token)
        kid = body["k"]
        key = self._keys.get(kid)
        if key is None:
            raise _unauthenticated("approval link was signed with a key this gateway does not hold")
        if not hmac.compare_digest(self._mac(key, raw), signature):
            raise _unauthenticated("approval link signature does not match")
        claims = ApprovalLinkClaims(
            change_id=body["c"],
            decision=body["d"],
            expires_at=datetime.fromtimestamp(body["e"], UTC),
            nonce=body["n"],
            kid=kid,
            round=ApprovalRound(*body[_ROUND_KEY]) if _ROUND_KEY in body else None,
        )
        if change_id is not None and not hmac.compare_digest(claims.change_id.encode(), change_id.encode()):
            raise _unauthenticated("approval link is for another change")
        if self._clock() >= claims.expires_at:
            raise UnauthenticatedError("link expired", issues=[Issue("token", "expired", "the link has expired")])
        return claims

    def callback_tokens(self, change_id: str, expires_at: datetime, round: ApprovalRound) -> dict[str, str]:
        """``{"approve": token, "reject": token}`` of one round, each with its own nonce, for ``POST CALLBACK_PATH``."""
        return {decision: self.sign(change_id, decision, expires_at, round=round) for decision in _DECISIONS}

    @staticmethod
    def _mac(key: bytes, raw: bytes) -> bytes:
        return hmac.new(key, raw, hashlib.sha256).digest()


def _parse(token: str) -> tuple[bytes, bytes, dict[str, Any]]:
    """Split and decode a token; anything not shaped like one this gateway issues is a 400 naming ``token``."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise _malformed()
    parts = token.split(".")
    if len(parts) != 2 or not all(_B64URL.match(p) for p in parts):
        raise _malformed()
    raw, signature = _b64decode(parts[0]), _b64decode(parts[1])
    if raw is None or signature is None or len(signature) != hashlib.sha256().digest_size:
        raise _malformed()
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed() from None
    if not _well_formed(body):
        raise _malformed()
    return raw, signature, body


def _well_formed(body: Any) -> bool:
    if not isinstance(body, dict) or set(body) - {_ROUND_KEY} != _PAYLOAD_KEYS:
        return False
    if _ROUND_KEY in body and not _well_formed_round(body[_ROUND_KEY]):
        return False
    c, d, e, k, n = body["c"], body["d"], body["e"], body["k"], body["n"]
    return (
        isinstance(c, str)
        and 0 < len(c) <= 256
        and d in _DECISIONS
        and type(e) is int
        and 0 <= e < 253402300800  # year 10000: datetime cannot hold more
        and isinstance(k, str)
        and bool(_KID.match(k))
        and isinstance(n, str)
        and bool(_NONCE.match(n))
    )


def _well_formed_round(value: Any) -> bool:
    if not (isinstance(value, list) and len(value) == 3):
        return False
    sequence, retries, diff_hash = value
    return (
        type(sequence) is int
        and 0 < sequence < 10**9
        and type(retries) is int
        and 0 <= retries < 10**6
        and isinstance(diff_hash, str)
        and bool(_DIFF_HASH.match(diff_hash))
    )


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes | None:
    """Unpadded base64url in its one canonical form, so a token has exactly one spelling."""
    if len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64encode(data) == text else None


def _malformed() -> RequestError:
    return RequestError(
        "approval link token is malformed",
        issues=[Issue("token", "invalid", "not an approval link token issued by this gateway")],
    )


def _unauthenticated(detail: str) -> UnauthenticatedError:
    return UnauthenticatedError(detail, issues=[Issue("token", "invalid-signature", detail)])
