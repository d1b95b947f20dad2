"""The emulation's cookies: the session (``AppServiceAuthSession``, App Service's name) and the sign-in in progress
(``Nonce``), both sealed with AES-256-GCM so a client can neither read nor change them.

The key is one file under ``<state dir>/easyauth/`` that the first instance creates and every instance reads, as
App Service's instances share one encryption key (``WEBSITE_AUTH_ENCRYPTION_KEY``): a session started on one
instance is valid on all. A cookie that does not open (tampered, truncated, sealed with another key, or of another
kind: the cookie's name is authenticated with it) counts as no cookie: the caller is signed out.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SESSION_COOKIE = "AppServiceAuthSession"
NONCE_COOKIE = "Nonce"
KEY_FILE = "session-key"
_NONCE_BYTES = 12


def load_or_create_key(key_dir: Path) -> bytes:
    """The shared 256-bit key. Created once: written to a private temporary file, then linked into place, so two
    instances starting together agree on the one that got there first."""
    path = key_dir / KEY_FILE
    if not path.exists():
        key_dir.mkdir(parents=True, exist_ok=True)
        temporary = key_dir / f".{KEY_FILE}.{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(AESGCM.generate_key(bit_length=256))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 256-bit key; delete it to start over (everyone is signed out)")
    return key


class CookieSealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, cookie: str, payload: dict[str, Any]) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, json.dumps(payload, separators=(",", ":")).encode(), cookie.encode())
        return base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open(self, cookie: str, value: str | None) -> dict[str, Any] | None:
        """The payload sealed as ``cookie``, or None for anything that does not open."""
        if not value:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], cookie.encode())
            payload = json.loads(plain)
        except (binascii.Error, ValueError, InvalidTag):
            return None
        return payload if isinstance(payload, dict) else None


def request_cookies(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's cookies by name (the first of a repeated name, as browsers send the most specific first)."""
    cookies: dict[str, str] = {}
    for name, value in headers:
        if name.lower() != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            key, sep, val = pair.strip().partition("=")
            if sep and key:
                cookies.setdefault(key, val.strip())
    return cookies


def set_cookie(name: str, value: str, *, path: str, same_site: str, secure: bool, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value: HttpOnly always; ``Secure`` on https and whenever ``SameSite=None`` (browsers drop a
    ``SameSite=None`` cookie without it)."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", f"SameSite={same_site}"]
    if secure or same_site == "None":
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def clear_cookie(name: str, *, path: str, same_site: str, secure: bool) -> str:
    return set_cookie(name, "", path=path, same_site=same_site, secure=secure, max_age=0)
