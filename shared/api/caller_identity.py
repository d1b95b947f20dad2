"""Who is calling: the caller's ``Principal`` from App Service Authentication (Easy Auth) or an Entra ID bearer token.

Two modes, chosen by the ``auth_mode`` setting and wired through ``Authenticator``:

``easyauth``
    Reads ``X-MS-CLIENT-PRINCIPAL``, the base64 JSON claims set that App Service Authentication (Easy Auth) puts
    on every request it has authenticated (``X-MS-CLIENT-PRINCIPAL-ID`` / ``-NAME`` as fallbacks). The gateway
    does **not** verify anything in this mode: it trusts the header because App Service strips any copy a client
    sends and only then adds its own. That guarantee exists only behind Easy Auth, so a gateway in this mode must
    never face a network without App Service Authentication in front of it (set to "require authentication");
    anyone who can reach it directly can claim any app id and any role. It is the default for local runs, where
    ``encode_easyauth_principal`` builds the header for tests and curl.

``jwt``
    Validates ``Authorization: Bearer <token>`` itself (``JwtValidator``): RS256 signature against the issuer's
    JWKS (fetched lazily, cached, refetched on an unknown ``kid`` at most once per ``min_refresh_interval`` so key
    rotation works and a flood of forged ``kid`` values cannot turn into a flood of JWKS requests), issuer and
    audience (each one of a configured set), ``exp`` and ``nbf`` with leeway.

Claim mapping (both modes): the app id (the source system the policy maps) is ``azp`` (v2 tokens) or ``appid``
(v1); roles are the app roles granted (``roles``); the user id is ``oid`` only when the token was issued to a
user, i.e. it carries delegated scopes (``scp``) or ``idtyp`` is ``user``. App-only tokens also carry an ``oid``
(the service principal's), which is deliberately not taken as a user.

A person signed in to the site (a browser session) is different: App Service builds their principal from the **ID
token**, which has no ``azp``, ``appid``, ``scp`` or ``idtyp`` (Microsoft identity platform, "ID token claims
reference"). Its ``aud`` is the client id of the app registration the session belongs to, and ``oid`` is the
person. So a principal with no app id but an ``aud`` and an ``oid`` is that person: ``user_id`` = ``oid``,
``app_id`` = ``aud``, ``auth_type`` = ``session``. Reviewers are then distinct people (separation of duties, the
lineage and the Provenance name the person), and an app-only token, which always carries an app id, is never taken
for a person. A session may review, approve and audit within its roles; submitting needs the policy to map its
app registration as a source (``Access.submitter``).

Every refusal raises ``UnauthenticatedError`` (401) or, from ``require_role``, ``ForbiddenError`` (403) with a
``detail`` naming the reason category, and writes exactly one record on the ``writeback.audit`` logger. Neither
the detail nor the record ever contains the header or the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

import httpx
import jwt
from jwt import PyJWK

from shared.core.errors import ConfigurationError, ForbiddenError, FrontNotVerifiedError, UnauthenticatedError
from shared.core.models import Principal

ROLE_SUBMIT = "Writeback.Submit"
ROLE_APPROVE = "Writeback.Approve"
ROLE_OPERATE = "Writeback.Operate"
ROLE_AUDIT = "Writeback.Audit"

AUDIT_LOGGER = "writeback.audit"
SESSION = "session"  # Principal.auth_type of a person signed in to the site (a principal built from an ID token)

EASYAUTH_PRINCIPAL_HEADER = "X-MS-CLIENT-PRINCIPAL"
EASYAUTH_PRINCIPAL_ID_HEADER = "X-MS-CLIENT-PRINCIPAL-ID"
EASYAUTH_PRINCIPAL_NAME_HEADER = "X-MS-CLIENT-PRINCIPAL-NAME"
AUTHORIZATION_HEADER = "Authorization"

ROLE_CLAIM_URI = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
OBJECT_ID_CLAIM_URI = "http://schemas.microsoft.com/identity/claims/objectidentifier"
SCOPE_CLAIM_URI = "http://schemas.microsoft.com/identity/claims/scope"

# Easy Auth passes most Entra claims through under their JWT names but maps some to these URIs.
_APP_ID_CLAIMS = ("azp", "appid")
_OBJECT_ID_CLAIMS = ("oid", OBJECT_ID_CLAIM_URI)
_SCOPE_CLAIMS = ("scp", SCOPE_CLAIM_URI)
_ROLE_CLAIMS = ("roles", ROLE_CLAIM_URI)

ACCEPTED_ALGORITHMS = ("RS256",)


class Reason(StrEnum):
    """Why a caller was refused: the audit record's ``reason`` and the start of the caller's ``detail``."""

    MISSING_CREDENTIALS = "missing credentials"
    MALFORMED_PRINCIPAL = "malformed client principal"
    NO_APP_ID = "no app id"
    MALFORMED = "malformed token"
    ALGORITHM = "algorithm not accepted"
    UNKNOWN_KEY = "unknown signing key"
    KEYS_UNAVAILABLE = "signing keys unavailable"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "token expired"
    NOT_YET_VALID = "token not yet valid"
    AUDIENCE = "audience not accepted"
    ISSUER = "issuer not accepted"
    MISSING_CLAIM = "missing claim"
    INVALID = "invalid token"


AuthMode = Literal["easyauth", "jwt"]

_audit = logging.getLogger(AUDIT_LOGGER)
_log = logging.getLogger(__name__)


class _RefusedError(Exception):
    """Internal: why a caller is refused, before it is audited and turned into ``UnauthenticatedError``."""

    def __init__(self, reason: Reason, hint: str | None = None, *, app_id: str | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.detail = f"{reason.value}: {hint}" if hint else reason.value
        self.app_id = app_id


def _refused(mode: AuthMode, refusal: _RefusedError) -> UnauthenticatedError:
    audit: dict[str, Any] = {"event": "auth.refused", "reason": refusal.reason.value, "mode": mode}
    if refusal.app_id:
        audit["appId"] = refusal.app_id
    _audit.warning("authentication refused (%s): %s", mode, refusal.reason.value, extra={"audit": audit})
    return UnauthenticatedError(detail=refusal.detail)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that works for plain dicts as well as case-insensitive header mappings."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value if value else None


# --- Easy Auth -----------------------------------------------------------------------------------------------


def _decode_client_principal(header_value: str) -> dict[str, Any]:
    text = "".join(header_value.split()).rstrip("=")
    # Standard and URL-safe alphabets both occur (and proxies drop padding); normalise to standard, padded.
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _RefusedError(Reason.MALFORMED_PRINCIPAL, "the header is not base64") from None
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise _RefusedError(Reason.MALFORMED_PRINCIPAL, "the header is not base64 JSON") from None
    if not isinstance(document, dict):
        raise _RefusedError(Reason.MALFORMED_PRINCIPAL, "expected a JSON object")
    return document


def _claim_pairs(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    claims = document.get("claims")
    if not isinstance(claims, list):
        raise _RefusedError(Reason.MALFORMED_PRINCIPAL, "'claims' must be a list")
    pairs: list[tuple[str, str]] = []
    for claim in claims:
        if not (isinstance(claim, dict) and isinstance(claim.get("typ"), str) and isinstance(claim.get("val"), str)):
            raise _RefusedError(Reason.MALFORMED_PRINCIPAL, "each claim needs string 'typ' and 'val'")
        pairs.append((claim["typ"], claim["val"]))
    return pairs


def _first(pairs: Sequence[tuple[str, str]], types: Iterable[str]) -> str | None:
    for wanted in types:
        for typ, val in pairs:
            if typ == wanted and val:
                return val
    return None


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _principal_from_claims(header_value: str | None, principal_id: str | None, principal_name: str | None) -> Principal:
    if not header_value or not header_value.strip():
        raise _RefusedError(Reason.MISSING_CREDENTIALS, f"no {EASYAUTH_PRINCIPAL_HEADER} header (Easy Auth)")
    document = _decode_client_principal(header_value)
    pairs = _claim_pairs(document)

    role_typ = document.get("role_typ")
    role_types = {*_ROLE_CLAIMS, *([role_typ] if isinstance(role_typ, str) and role_typ else [])}
    roles = _unique(val for typ, val in pairs if typ in role_types)
    name_typ = document.get("name_typ")
    name_types = ["name", *([name_typ] if isinstance(name_typ, str) and name_typ else []), "preferred_username"]

    app_id = _first(pairs, _APP_ID_CLAIMS)
    if app_id is None:
        session_app, person = _first(pairs, ("aud",)), _first(pairs, _OBJECT_ID_CLAIMS)
        if session_app is None or person is None:
            raise _RefusedError(
                Reason.NO_APP_ID,
                "the client principal has no 'azp' or 'appid' claim, nor the 'aud' and 'oid' of a signed-in person",
            )
        display_name = _first(pairs, name_types) or principal_name
        return Principal(app_id=session_app, user_id=person, display_name=display_name, roles=roles, auth_type=SESSION)

    is_user = _first(pairs, _SCOPE_CLAIMS) is not None or _first(pairs, ("idtyp",)) == "user"
    user_id = (_first(pairs, _OBJECT_ID_CLAIMS) or principal_id) if is_user else None
    display_name = _first(pairs, name_types) or (principal_name if is_user else None)
    return Principal(app_id=app_id, user_id=user_id, display_name=display_name, roles=roles, auth_type="easyauth")


def principal_from_easyauth(
    header_value: str | None, *, principal_id: str | None = None, principal_name: str | None = None
) -> Principal:
    """The caller described by an ``X-MS-CLIENT-PRINCIPAL`` header value; raises ``UnauthenticatedError``.

    ``principal_id`` / ``principal_name`` are the ``X-MS-CLIENT-PRINCIPAL-ID`` / ``-NAME`` headers, used for a
    user's id and name when the claims lack them. Trusts its input: see the module docstring.
    """
    try:
        return _principal_from_claims(header_value, principal_id, principal_name)
    except _RefusedError as refusal:
        raise _refused("easyauth", refusal) from None


def encode_easyauth_principal(
    app_id: str, roles: Iterable[str] = (), user_id: str | None = None, name: str | None = None
) -> str:
    """An ``X-MS-CLIENT-PRINCIPAL`` value shaped like the one App Service sends for an Entra caller.

    For tests, local runs and the docs' curl examples. With ``user_id`` the caller is a user acting through the app
    (a delegated scope is included); without it, the app itself.
    """
    claims = [{"typ": "appid", "val": app_id}]
    if user_id is not None:
        claims.append({"typ": OBJECT_ID_CLAIM_URI, "val": user_id})
        claims.append({"typ": SCOPE_CLAIM_URI, "val": "user_impersonation"})
    if name is not None:
        claims.append({"typ": "name", "val": name})
    claims.extend({"typ": ROLE_CLAIM_URI, "val": role} for role in roles)
    document = {"auth_typ": "aad", "name_typ": "name", "role_typ": ROLE_CLAIM_URI, "claims": claims}
    return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode("ascii")


# --- Entra ID bearer tokens ----------------------------------------------------------------------------------


class _JwksUnavailableError(Exception):
    """Internal: the JWKS could not be fetched or held no usable key."""


def _as_tuple(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigurationError(detail=f"JWT validation needs at least one non-empty {what}")
    return values


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RefusedError(Reason.MALFORMED, f"claim '{name}' is not a number")
    return float(value)


class JwtValidator:
    """Validates Entra ID access tokens against the issuer's JWKS and turns them into a ``Principal``.

    Thread-safe. ``clock`` is the notion of "now" for ``exp`` / ``nbf`` and for the refresh throttle. Cached keys
    older than ``max_key_age`` are refetched on the next validation, so a key withdrawn from the JWKS stops being
    accepted even if no unknown ``kid`` ever arrives.
    """

    def __init__(
        self,
        *,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        jwks_url: str,
        leeway: float = 60.0,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        min_refresh_interval: float = 60.0,
        max_key_age: float = 86_400.0,
    ) -> None:
        if not jwks_url:
            raise ConfigurationError(detail="JWT validation needs a JWKS URL")
        if leeway < 0 or min_refresh_interval < 0 or max_key_age <= 0:
            raise ConfigurationError(detail="JWT leeway and refresh interval must be >= 0, max_key_age > 0")
        self._issuers = _as_tuple(issuer, "issuer")
        self._audiences = _as_tuple(audience, "audience")
        self._jwks_url = jwks_url
        self._leeway = leeway
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=10.0)
        self._clock = clock
        self._min_refresh_interval = min_refresh_interval
        self._max_key_age = max_key_age
        self._lock = threading.Lock()
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None

    def close(self) -> None:
        """Close the HTTP client if this validator created it."""
        if self._owns_http:
            self._http.close()

    def validate(self, token: str) -> Principal:
        """The caller a bearer token stands for; raises ``UnauthenticatedError`` naming why it was refused."""
        try:
            return self._validate(token)
        except _RefusedError as refusal:
            raise _refused("jwt", refusal) from None

    def _validate(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _RefusedError(Reason.MALFORMED, "not a signed JWT") from None
        if header.get("alg") not in ACCEPTED_ALGORITHMS:
            raise _RefusedError(Reason.ALGORITHM, "only RS256 is accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _RefusedError(Reason.MALFORMED, "no key id ('kid') in the header")

        key = self._signing_key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ACCEPTED_ALGORITHMS),
                audience=self._audiences,
                issuer=self._issuers,
                # exp / nbf are checked below against the injected clock, after the app id is known for the audit.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "aud"],
                },
            )
        except jwt.InvalidSignatureError:
            raise _RefusedError(Reason.BAD_SIGNATURE) from None
        except jwt.InvalidAudienceError:
            raise _RefusedError(Reason.AUDIENCE) from None
        except jwt.InvalidIssuerError:
            raise _RefusedError(Reason.ISSUER) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _RefusedError(Reason.MISSING_CLAIM, f"'{exc.claim}'") from None
        except jwt.DecodeError:
            raise _RefusedError(Reason.MALFORMED) from None
        except jwt.InvalidTokenError:
            raise _RefusedError(Reason.INVALID) from None

        app_id = next((v for name in _APP_ID_CLAIMS if isinstance(v := claims.get(name), str) and v), None)
        now = self._clock()
        expires = _numeric(claims, "exp")
        not_before = _numeric(claims, "nbf")
        if expires is not None and expires <= now - self._leeway:
            raise _RefusedError(Reason.EXPIRED, app_id=app_id)
        if not_before is not None and not_before > now + self._leeway:
            raise _RefusedError(Reason.NOT_YET_VALID, app_id=app_id)
        if app_id is None:
            raise _RefusedError(Reason.NO_APP_ID, "the token has no 'azp' or 'appid' claim")

        raw_roles = claims.get("roles")
        roles = [raw_roles] if isinstance(raw_roles, str) else raw_roles if isinstance(raw_roles, list) else []
        is_user = bool(claims.get("scp")) or claims.get("idtyp") == "user"
        oid = claims.get("oid")
        name = claims.get("name")
        return Principal(
            app_id=app_id,
            user_id=oid if is_user and isinstance(oid, str) and oid else None,
            display_name=name if isinstance(name, str) and name else None,
            roles=_unique(r for r in roles if isinstance(r, str)),
            auth_type="jwt",
        )

    def _signing_key(self, kid: str) -> PyJWK:
        keys, fetched_at = self._keys, self._fetched_at
        if fetched_at is not None and self._clock() - fetched_at < self._max_key_age and kid in keys:
            return keys[kid]
        with self._lock:
            now = self._clock()
            throttled = self._last_attempt is not None and now - self._last_attempt < self._min_refresh_interval
            if not throttled:
                self._last_attempt = now
                try:
                    self._keys = self._fetch_keys()
                    self._fetched_at = now
                except _JwksUnavailableError as exc:
                    # Keep serving the keys we have: an outage of the JWKS endpoint must not lock everyone out.
                    _log.error("JWKS fetch from %s failed: %s", self._jwks_url, exc)
            if self._fetched_at is None:
                raise _RefusedError(Reason.KEYS_UNAVAILABLE, "try again later")
            key = self._keys.get(kid)
            if key is None:
                raise _RefusedError(Reason.UNKNOWN_KEY)
            return key

    def _fetch_keys(self) -> dict[str, PyJWK]:
        try:
            response = self._http.get(self._jwks_url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _JwksUnavailableError(type(exc).__name__) from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise _JwksUnavailableError("no 'keys' list in the JWKS document")
        keys: dict[str, PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
                continue
            try:
                keys[entry["kid"]] = PyJWK(entry, algorithm="RS256")
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                _log.warning("skipping unusable JWKS key %s", entry["kid"])
        if not keys:
            raise _JwksUnavailableError("no usable RS256 signing keys in the JWKS document")
        return keys


# --- dispatch and authorisation ------------------------------------------------------------------------------


def _bearer_token(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Authenticator:
    """Turns a request's headers into the caller's ``Principal`` in the configured mode."""

    def __init__(self, mode: AuthMode, *, jwt: JwtValidator | None = None, front_verified: bool = True) -> None:
        """``front_verified=False``: the ``easyauth`` mode may not believe the header (in Azure with no sign of
        App Service Authentication in front): every call is refused with 503 rather than served as anyone."""
        if mode not in ("easyauth", "jwt"):
            raise ConfigurationError(detail=f"unknown auth mode {mode!r}; expected 'easyauth' or 'jwt'")
        if mode == "jwt" and jwt is None:
            raise ConfigurationError(detail="auth mode 'jwt' needs a JwtValidator")
        self.mode: AuthMode = mode
        self._jwt = jwt
        self._front_verified = front_verified

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller, or ``UnauthenticatedError`` (audited once)."""
        if self.mode == "easyauth" and not self._front_verified:
            _audit.error("easyauth mode without App Service Authentication", extra={"audit": {"event": "auth.front"}})
            raise FrontNotVerifiedError(
                "The gateway runs in Azure in the easyauth mode, but App Service Authentication is not known to be "
                "on (WEBSITE_AUTH_ENABLED is not True): turn it on, use WRITEBACK_AUTH_MODE=jwt, or set "
                "WRITEBACK_TRUSTED_FRONT=true if another front sets X-MS-CLIENT-PRINCIPAL and strips a client's"
            )
        if self.mode == "easyauth":
            return principal_from_easyauth(
                _header(headers, EASYAUTH_PRINCIPAL_HEADER),
                principal_id=_header(headers, EASYAUTH_PRINCIPAL_ID_HEADER),
                principal_name=_header(headers, EASYAUTH_PRINCIPAL_NAME_HEADER),
            )
        assert self._jwt is not None
        token = _bearer_token(_header(headers, AUTHORIZATION_HEADER))
        if token is None:
            raise _refused("jwt", _RefusedError(Reason.MISSING_CREDENTIALS, "expected 'Authorization: Bearer <token>'"))
        return self._jwt.validate(token)


def require_role(principal: Principal, *roles: str) -> None:
    """Return if the principal holds at least one of ``roles``; otherwise audit and raise ``ForbiddenError``."""
    if not roles:
        raise ValueError("require_role needs at least one role")
    if any(role in principal.roles for role in roles):
        return
    audit = {"event": "auth.forbidden", "appId": principal.app_id, "required": list(roles)}
    _audit.warning("access forbidden: caller lacks the required role", extra={"audit": audit})
    raise ForbiddenError(detail=f"requires one of the roles: {', '.join(roles)}")
