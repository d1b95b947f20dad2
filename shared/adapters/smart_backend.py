"""SMART Backend Services (HL7 SMART App Launch 2.x, "Backend Services"): tokens for EHR targets.

The gateway authenticates to an EHR's token endpoint with the OAuth 2.0 client-credentials grant and a signed JWT
client assertion (RFC 7523): ``iss`` = ``sub`` = the client id registered at the EHR, ``aud`` = the token URL, a
lifetime of at most five minutes and a fresh ``jti`` each time, signed RS384 or ES384 with a key whose public half the
EHR knows (a JWKS URL or an uploaded key). The access tokens it gets back are cached per scope until
``refresh_margin`` seconds before they expire.

Keys come from one of two places (the target's ``auth.key_name``):

- ``file:<path>``: a PEM private key on disk (local runs and tests);
- ``kv:<vault-url>/<key-name>[/<version>]``: an RSA or EC P-384 **key** in Azure Key Vault (or Managed HSM). The key
  never leaves the vault: each assertion is signed by Key Vault (``CryptographyClient.sign``), with the managed
  identity, which needs the ``Key Vault Crypto User`` role on the key. A non-exportable key cannot be copied off a
  host, and every signature is in Key Vault's audit log; a PEM kept in a *secret* would be read into memory on
  every instance instead.

The ``kid`` is the RFC 7638 thumbprint of the public key and the algorithm follows the key type (RSA → RS384,
EC P-384 → ES384), so a target entry needs nothing beyond ``token_url``, ``client_id``, ``key_name`` and ``scope``.
Errors never carry the assertion or a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared.adapters.token_cache import ScopedTokenCache
from shared.core.errors import AuthError, ConfigurationError, RetryableError
from shared.core.fhir_headers import parse_retry_after
from shared.core.targets import AuthKind, TargetConfig, in_clear_off_loopback

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300  # SMART: exp no more than five minutes in the future
DEFAULT_REFRESH_MARGIN_SECONDS = 60.0
DEFAULT_EXPIRES_IN = 300  # when a token response leaves out expires_in (SMART requires it), assume a short life
SUPPORTED_ALGORITHMS = ("RS384", "ES384")
MIN_RSA_BITS = 2048

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


# --- keys ---------------------------------------------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(size, "big"))


def public_jwk(public_key: PublicKey, *, kid: str | None = None, algorithm: str | None = None) -> dict[str, str]:
    """The public JWK of a key (what goes into the JWKS registered at the EHR), with ``kid``, ``alg`` and ``use``."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    else:
        if not isinstance(public_key.curve, ec.SECP384R1):
            raise ConfigurationError(f"EC key on curve {public_key.curve.name}: only P-384 (ES384) is supported")
        ec_numbers = public_key.public_numbers()
        members = {
            "crv": "P-384",
            "kty": "EC",
            "x": _b64url_uint(ec_numbers.x, 48),
            "y": _b64url_uint(ec_numbers.y, 48),
        }
    return {
        **members,
        "kid": kid or jwk_thumbprint(public_key),
        "alg": algorithm or algorithm_for(public_key),
        "use": "sig",
    }


def jwk_thumbprint(public_key: PublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of the public key, base64url: the ``kid`` the gateway uses."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    else:
        ec_numbers = public_key.public_numbers()
        size = (public_key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(public_key.curve.name, "")
        members = {
            "crv": crv,
            "kty": "EC",
            "x": _b64url_uint(ec_numbers.x, size),
            "y": _b64url_uint(ec_numbers.y, size),
        }
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def algorithm_for(public_key: PublicKey) -> str:
    """RS384 for RSA (2048 bits or more), ES384 for EC P-384; anything else is a ConfigurationError."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise ConfigurationError(f"RSA key of {public_key.key_size} bits: use {MIN_RSA_BITS} or more")
        return "RS384"
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP384R1):
        return "ES384"
    raise ConfigurationError("signing key must be RSA (RS384) or EC P-384 (ES384)")


class AssertionSigner(Protocol):
    """Signs client assertions: a key id, a JWS algorithm and a ``sign(signing_input) -> JWS signature``."""

    @property
    def kid(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    def sign(self, signing_input: bytes) -> bytes: ...


@dataclass(frozen=True)
class SigningKey:
    """A private key held in memory (local runs): ``kid``, ``algorithm`` (RS384 / ES384) and the key."""

    kid: str
    algorithm: str
    private_key: PrivateKey

    def __post_init__(self) -> None:
        expected = algorithm_for(self.private_key.public_key())
        if self.algorithm != expected:
            raise ConfigurationError(f"algorithm {self.algorithm!r} does not fit this key (expected {expected})")

    def sign(self, signing_input: bytes) -> bytes:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return RSAAlgorithm(RSAAlgorithm.SHA384).sign(signing_input, self.private_key)
        # PyJWT turns the DER signature into the raw r || s that JWS wants
        return ECAlgorithm(ECAlgorithm.SHA384).sign(signing_input, self.private_key)

    @classmethod
    def from_private_key(cls, private_key: PrivateKey, *, kid: str | None = None) -> SigningKey:
        public = private_key.public_key()
        return cls(kid=kid or jwk_thumbprint(public), algorithm=algorithm_for(public), private_key=private_key)

    def public_jwk(self) -> dict[str, str]:
        return public_jwk(self.private_key.public_key(), kid=self.kid, algorithm=self.algorithm)


def load_key_file(path: Path | str, kid: str | None = None, algorithm: str | None = None) -> SigningKey:
    """A PEM private key (PKCS#8 or traditional, unencrypted) from disk; ``kid`` defaults to the RFC 7638 thumbprint
    and ``algorithm`` to the one the key type implies."""
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"signing key file {p}: {type(exc).__name__}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"signing key file {p}: must hold an RSA or EC P-384 private key")
    public = key.public_key()
    return SigningKey(kid=kid or jwk_thumbprint(public), algorithm=algorithm or algorithm_for(public), private_key=key)


class _CryptoClient(Protocol):
    def sign(self, algorithm: Any, digest: bytes, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class KeyVaultSigningKey:
    """A Key Vault key that signs in the vault (``CryptographyClient.sign`` over the SHA-384 digest).

    Key Vault returns RSA signatures as PKCS#1 v1.5 bytes and EC signatures as raw ``r || s``: both are what JWS
    expects, so they are used as they come.
    """

    kid: str
    algorithm: str
    crypto: _CryptoClient

    def sign(self, signing_input: bytes) -> bytes:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import SignatureAlgorithm

        digest = hashlib.sha384(signing_input).digest()
        try:
            result = self.crypto.sign(SignatureAlgorithm(self.algorithm), digest)
        except AzureError as exc:
            raise key_vault_error(exc, "Key Vault sign") from None
        signature = getattr(result, "signature", result)
        if not isinstance(signature, bytes):
            raise AuthError(detail="Key Vault sign returned no signature")
        return signature

    @classmethod
    def for_public_key(cls, public_key: PublicKey, crypto: _CryptoClient) -> KeyVaultSigningKey:
        return cls(kid=jwk_thumbprint(public_key), algorithm=algorithm_for(public_key), crypto=crypto)


def key_vault_error(exc: Exception, what: str) -> RetryableError | AuthError:
    """Key Vault throttling, outages and transport errors are retryable; refusals (401/403/404) are not."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    if isinstance(exc, ClientAuthenticationError | HttpResponseError) and not (
        status and (status == 429 or status >= 500)
    ):
        return AuthError(detail=f"{what} refused ({type(exc).__name__})", downstream_status=status)
    return RetryableError(detail=f"{what} failed ({status or type(exc).__name__})", downstream_status=status)


def _public_key_from_vault_jwk(jwk: Any) -> PublicKey:
    kty = str(getattr(jwk, "kty", "") or "")
    if kty.startswith("RSA"):
        n, e = getattr(jwk, "n", None), getattr(jwk, "e", None)
        if not (isinstance(n, bytes) and isinstance(e, bytes)):
            raise ConfigurationError("Key Vault RSA key without n / e")
        return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    if kty.startswith("EC"):
        crv, x, y = str(getattr(jwk, "crv", "") or ""), getattr(jwk, "x", None), getattr(jwk, "y", None)
        if crv != "P-384":
            raise ConfigurationError(f"Key Vault EC key on curve {crv!r}: only P-384 (ES384) is supported")
        if not (isinstance(x, bytes) and isinstance(y, bytes)):
            raise ConfigurationError("Key Vault EC key without x / y")
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP384R1()
        ).public_key()
    raise ConfigurationError(f"Key Vault key type {kty!r}: use RSA (RS384) or EC P-384 (ES384)")


def load_key_from_key_vault(
    vault_url: str, key_name: str, credential: Any, *, version: str | None = None
) -> KeyVaultSigningKey:
    """The Key Vault key ``key_name`` (latest version unless given), signing in the vault with ``credential``.

    Reads the public key once (for the ``kid`` and algorithm); the private key is never exported. Needs the
    ``azure-keyvault-keys`` package and, for the identity, ``Key Vault Crypto User`` (get + sign) on the key.
    """
    from azure.core.exceptions import AzureError
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.keys.crypto import CryptographyClient

    try:
        vault_key = KeyClient(vault_url, credential).get_key(key_name, version)
    except AzureError as exc:
        raise key_vault_error(exc, f"Key Vault key {key_name!r}") from None
    public = _public_key_from_vault_jwk(vault_key.key)
    return KeyVaultSigningKey.for_public_key(public, CryptographyClient(vault_key, credential))


class LazySigner:
    """Loads its signer on first use (so building a provider does no I/O), then keeps it; a failed load is retried."""

    def __init__(self, loader: Callable[[], AssertionSigner]) -> None:
        self._loader = loader
        self._signer: AssertionSigner | None = None
        self._lock = threading.Lock()

    def _get(self) -> AssertionSigner:
        with self._lock:
            if self._signer is None:
                self._signer = self._loader()
            return self._signer

    @property
    def kid(self) -> str:
        return self._get().kid

    @property
    def algorithm(self) -> str:
        return self._get().algorithm

    def sign(self, signing_input: bytes) -> bytes:
        return self._get().sign(signing_input)


# --- key references -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyReference:
    """A parsed ``auth.key_name``: ``file:<path>`` or ``kv:<vault-url>/<key-name>[/<version>]``."""

    kind: str  # "file" or "kv"
    path: Path | None = None
    vault_url: str | None = None
    name: str | None = None
    version: str | None = None


def parse_key_name(key_name: str) -> KeyReference:
    """``file:/secrets/smart.pem`` or ``kv:https://my-vault.vault.azure.net/smart-epic[/<version>]``
    (a ``/keys/`` segment, as in a Key Vault key id, is accepted too)."""
    if key_name.startswith("file:"):
        path = key_name[len("file:") :]
        if not path:
            raise ConfigurationError("key_name 'file:' needs a path")
        return KeyReference(kind="file", path=Path(path))
    if key_name.startswith("kv:"):
        url = urlsplit(key_name[len("kv:") :])
        parts = [p for p in url.path.split("/") if p]
        if parts[:1] == ["keys"]:
            parts = parts[1:]
        if url.scheme != "https" or not url.netloc or not 1 <= len(parts) <= 2:
            raise ConfigurationError(
                f"key_name {key_name!r}: expected kv:https://<vault>.vault.azure.net/<key-name>[/<version>]"
            )
        return KeyReference(
            kind="kv",
            vault_url=f"https://{url.netloc}",
            name=parts[0],
            version=parts[1] if len(parts) == 2 else None,
        )
    raise ConfigurationError(f"key_name {key_name!r}: expected 'file:<path>' or 'kv:<vault-url>/<key-name>'")


# --- the token provider -------------------------------------------------------------------------------------


class SmartBackendTokenProvider:
    """``TokenProvider`` for a SMART Backend Services client: client-credentials grant with a JWT assertion.

    Tokens are cached per scope until ``refresh_margin`` seconds before they expire (half their lifetime when they
    live shorter than twice the margin); concurrent callers for one scope share one token request.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        key: AssertionSigner,
        *,
        jku: str | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN_SECONDS,
        assertion_lifetime: int = ASSERTION_LIFETIME_SECONDS,
        timeout: float = 10.0,
    ) -> None:
        if not 0 < assertion_lifetime <= ASSERTION_LIFETIME_SECONDS:
            raise ConfigurationError(f"assertion lifetime must be 1..{ASSERTION_LIFETIME_SECONDS} seconds")
        self.token_url = token_url
        self.client_id = client_id
        self._key = key
        self._jku = jku
        self._http = http
        self._own_http: httpx.Client | None = None
        self._clock = clock
        self._assertion_lifetime = assertion_lifetime
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        self._cache = ScopedTokenCache(refresh_margin=refresh_margin, clock=clock)
        self._lock = threading.Lock()

    # -- TokenProvider ---------------------------------------------------------------------------------------

    def token(self, scope: str) -> str:
        def fetch() -> tuple[str, float]:
            fetched_at = self._clock()
            access_token, expires_in = self._request(scope)
            return access_token, fetched_at + expires_in

        return self._cache.get(scope, fetch)

    def invalidate(self, scope: str | None = None) -> None:
        """Forget the cached token for ``scope`` (or all scopes), e.g. after the target answered 401."""
        self._cache.invalidate(scope)

    # -- the assertion ---------------------------------------------------------------------------------------

    def client_assertion(self) -> str:
        """A new signed client assertion (compact JWS); never logged, never put into an error."""
        now = int(self._clock())
        header: dict[str, str] = {"alg": self._key.algorithm, "kid": self._key.kid, "typ": "JWT"}
        if self._jku:
            header["jku"] = self._jku
        claims: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + self._assertion_lifetime,
            "jti": str(uuid.uuid4()),
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        return signing_input + "." + _b64url(self._key.sign(signing_input.encode("ascii")))

    # -- internals -------------------------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is not None:
            return self._http
        with self._lock:
            if self._own_http is None or self._own_http.is_closed:
                self._own_http = httpx.Client(follow_redirects=False, headers={"User-Agent": "fhir-writeback-gateway"})
            return self._own_http

    def _request(self, scope: str) -> tuple[str, float]:
        what = f"SMART token request for scope {scope!r}"
        if in_clear_off_loopback(self.token_url):
            # The targets file refuses such a token_url; this holds for a provider built any other way. Nothing is
            # signed or sent.
            raise AuthError(detail=f"{what}: refused to send a client assertion over plain http off loopback")
        form = {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        try:
            resp = self._client().post(
                self.token_url, data=form, headers={"Accept": "application/json"}, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise RetryableError(detail=f"{what}: timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise RetryableError(detail=f"{what}: failed ({type(exc).__name__})") from None
        status = resp.status_code
        if status == 200:
            return self._parse(resp, what)
        code = _oauth_error(resp)
        detail = f"{what}: {status}" + (f" {code}" if code else "")
        if status == 429 or status == 408 or status >= 500:
            raise RetryableError(
                detail=detail, downstream_status=status, retry_after=parse_retry_after(resp.headers.get("Retry-After"))
            )
        raise AuthError(detail=detail, downstream_status=status)

    @staticmethod
    def _parse(resp: httpx.Response, what: str) -> tuple[str, float]:
        try:
            body = resp.json()
        except (ValueError, UnicodeDecodeError):
            raise AuthError(detail=f"{what}: response is not JSON", downstream_status=resp.status_code) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(detail=f"{what}: response has no access_token", downstream_status=resp.status_code)
        token_type = body.get("token_type")
        if isinstance(token_type, str) and token_type.lower() != "bearer":
            raise AuthError(detail=f"{what}: token_type {token_type!r} is not bearer")
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN)
        try:
            lifetime = float(expires_in)
        except (TypeError, ValueError):
            lifetime = float(DEFAULT_EXPIRES_IN)
        return token, max(0.0, lifetime)


def _oauth_error(resp: httpx.Response) -> str | None:
    """The OAuth ``error`` code of an error response (``invalid_client``...), if it looks like one."""
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError):
        return None
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) <= 64:
        return code
    return None


# --- the per-target factory ---------------------------------------------------------------------------------

_providers: dict[tuple[str, str, str, str | None], SmartBackendTokenProvider] = {}
_providers_lock = threading.Lock()


def smart_provider_for(target: TargetConfig, *, managed_identity_client_id: str | None) -> SmartBackendTokenProvider:
    """One shared provider per (token URL, client id, key, identity) for a ``smart_backend_services`` target.

    The key is loaded on first use (a ``kv:`` key with the managed identity), not here, so start-up does no I/O.
    """
    auth = target.auth
    if auth.type is not AuthKind.SMART_BACKEND_SERVICES:
        raise ConfigurationError(f"target {target.id!r}: not a smart_backend_services target")
    if not (auth.token_url and auth.client_id and auth.key_name):
        raise ConfigurationError(f"target {target.id!r}: smart_backend_services needs token_url, client_id, key_name")
    if not auth.scope:
        raise ConfigurationError(f"target {target.id!r}: smart_backend_services needs 'scope' (e.g. system/Patient.rs)")
    ref = parse_key_name(auth.key_name)
    cache_key = (auth.token_url, auth.client_id, auth.key_name, managed_identity_client_id or None)
    with _providers_lock:
        provider = _providers.get(cache_key)
        if provider is None:
            provider = SmartBackendTokenProvider(
                auth.token_url, auth.client_id, LazySigner(_loader(ref, managed_identity_client_id or None))
            )
            _providers[cache_key] = provider
        return provider


def _loader(ref: KeyReference, managed_identity_client_id: str | None) -> Callable[[], AssertionSigner]:
    if ref.kind == "file":
        path = ref.path
        assert path is not None
        return lambda: load_key_file(path)
    vault_url, name, version = ref.vault_url, ref.name, ref.version
    assert vault_url is not None and name is not None

    def load() -> AssertionSigner:
        from azure.identity import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=managed_identity_client_id)
        return load_key_from_key_vault(vault_url, name, credential, version=version)

    return load


def reset_smart_providers() -> None:
    """Drop the process-wide SMART providers (tests)."""
    with _providers_lock:
        _providers.clear()
