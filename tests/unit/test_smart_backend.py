"""SMART Backend Services: the client assertion, the token cache, the error mapping, key loading and the factory.

The token endpoint is an in-process ``httpx.MockTransport`` double; the local token endpoint's checks are exercised
in-process through its ``Authority`` (no sockets).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from azure.core.exceptions import HttpResponseError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from shared.adapters.identity import token_provider_for
from shared.adapters.smart_backend import (
    ASSERTION_TYPE,
    KeyVaultSigningKey,
    SigningKey,
    SmartBackendTokenProvider,
    jwk_thumbprint,
    load_key_file,
    parse_key_name,
    public_jwk,
    reset_smart_providers,
)
from shared.core.errors import AuthError, ConfigurationError, RetryableError
from shared.core.targets import TargetConfig
from tests.support import ManualClock, from_threads
from tools.smart_token_endpoint import Authority, RefusedError

TOKEN_URL = "https://ehr.example/oauth2/token"
CLIENT_ID = "writeback-gateway"
SCOPE = "system/Patient.rs system/Observation.c"

START = 1_700_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())


class TokenEndpointDouble:
    """Records token requests and answers each with ``respond(n)`` (default: a fresh token, expires_in 300)."""

    def __init__(self, respond: Callable[[int], httpx.Response] | None = None, delay: float = 0.0) -> None:
        self.forms: list[dict[str, str]] = []
        self._respond = respond or (lambda n: httpx.Response(200, json=self.grant(n)))
        self._delay = delay
        self._lock = threading.Lock()

    @staticmethod
    def grant(n: int, expires_in: int = 300) -> dict[str, Any]:
        return {"access_token": f"token-{n}", "token_type": "bearer", "expires_in": expires_in, "scope": SCOPE}

    def handler(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        with self._lock:
            self.forms.append(form)
            n = len(self.forms)
        if self._delay:
            time.sleep(self._delay)
        return self._respond(n)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


def provider(
    double: TokenEndpointDouble, key: Any = None, *, clock: Callable[[], float] = time.time, **kw: Any
) -> SmartBackendTokenProvider:
    signer = key if key is not None else SigningKey.from_private_key(RSA_KEY)
    return SmartBackendTokenProvider(TOKEN_URL, CLIENT_ID, signer, http=double.client(), clock=clock, **kw)


def decode(assertion: str, public_key: Any, algorithm: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        assertion,
        public_key,
        algorithms=[algorithm],
        audience=TOKEN_URL,
        issuer=CLIENT_ID,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    return claims


# --- the assertion ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("private_key", "alg"), [(RSA_KEY, "RS384"), (EC_KEY, "ES384")])
def test_assertion_claims_and_header(private_key: Any, alg: str) -> None:
    key = SigningKey.from_private_key(private_key)
    p = SmartBackendTokenProvider(TOKEN_URL, CLIENT_ID, key)
    before = time.time()
    assertion = p.client_assertion()
    header = jwt.get_unverified_header(assertion)
    assert header == {"alg": alg, "kid": jwk_thumbprint(private_key.public_key()), "typ": "JWT"}
    claims = decode(assertion, private_key.public_key(), alg)
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL
    assert claims["exp"] - claims["iat"] <= 300
    assert claims["exp"] <= before + 300 + 1
    assert uuid.UUID(claims["jti"]).version == 4


def test_assertion_carries_jku_when_configured() -> None:
    jku = "https://gateway.example/.well-known/jwks.json"
    p = SmartBackendTokenProvider(TOKEN_URL, CLIENT_ID, SigningKey.from_private_key(RSA_KEY), jku=jku)
    assert jwt.get_unverified_header(p.client_assertion())["jku"] == jku


def test_every_assertion_has_a_new_jti() -> None:
    p = SmartBackendTokenProvider(TOKEN_URL, CLIENT_ID, SigningKey.from_private_key(EC_KEY))
    jtis = {decode(p.client_assertion(), EC_KEY.public_key(), "ES384")["jti"] for _ in range(25)}
    assert len(jtis) == 25


def test_assertion_lifetime_cannot_exceed_five_minutes() -> None:
    with pytest.raises(ConfigurationError):
        SmartBackendTokenProvider(TOKEN_URL, CLIENT_ID, SigningKey.from_private_key(RSA_KEY), assertion_lifetime=301)


def test_token_request_is_a_client_credentials_grant_with_the_assertion() -> None:
    double = TokenEndpointDouble()
    assert provider(double).token(SCOPE) == "token-1"
    (form,) = double.forms
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == SCOPE
    assert form["client_assertion_type"] == ASSERTION_TYPE == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert decode(form["client_assertion"], RSA_KEY.public_key(), "RS384")["sub"] == CLIENT_ID


# --- caching ------------------------------------------------------------------------------------------------


def test_token_cached_until_expiry_minus_margin() -> None:
    clock, double = ManualClock(START), TokenEndpointDouble()
    p = provider(double, clock=clock, refresh_margin=60)
    assert p.token(SCOPE) == "token-1"
    clock.now += 239
    assert p.token(SCOPE) == "token-1"
    assert len(double.forms) == 1
    clock.now += 2  # 241 s: within 60 s of the 300 s expiry
    assert p.token(SCOPE) == "token-2"
    assert len(double.forms) == 2


def test_short_lived_token_refreshed_after_half_its_life() -> None:
    clock = ManualClock(START)
    double = TokenEndpointDouble(lambda n: httpx.Response(200, json=TokenEndpointDouble.grant(n, expires_in=60)))
    p = provider(double, clock=clock, refresh_margin=60)
    p.token(SCOPE)
    clock.now += 29
    assert p.token(SCOPE) == "token-1"
    clock.now += 2
    assert p.token(SCOPE) == "token-2"


def test_cache_is_per_scope_and_can_be_invalidated() -> None:
    double = TokenEndpointDouble()
    p = provider(double)
    assert p.token("system/Patient.rs") == "token-1"
    assert p.token("system/Observation.c") == "token-2"
    assert p.token("system/Patient.rs") == "token-1"
    p.invalidate("system/Patient.rs")
    assert p.token("system/Patient.rs") == "token-3"
    assert [f["scope"] for f in double.forms] == ["system/Patient.rs", "system/Observation.c", "system/Patient.rs"]


def test_concurrent_callers_share_one_token_request() -> None:
    double = TokenEndpointDouble(delay=0.1)
    p = provider(double)
    assert from_threads(lambda: p.token(SCOPE), 12) == ["token-1"] * 12
    assert len(double.forms) == 1


# --- errors -------------------------------------------------------------------------------------------------


def _no_secrets(exc: BaseException, double: TokenEndpointDouble) -> None:
    text = str(exc) + repr(exc)
    for form in double.forms:
        assert form["client_assertion"] not in text
        assert form["client_assertion"].split(".")[2] not in text
    assert "eyJ" not in text
    assert exc.__cause__ is None


@pytest.mark.parametrize("status", [400, 401, 403])
def test_refusal_is_auth_error(status: int) -> None:
    body = {"error": "invalid_client", "error_description": "bad signature"}
    double = TokenEndpointDouble(lambda n: httpx.Response(status, json=body))
    with pytest.raises(AuthError) as caught:
        provider(double).token(SCOPE)
    assert caught.value.downstream_status == status
    assert "invalid_client" in str(caught.value)
    _no_secrets(caught.value, double)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error_is_retryable(status: int) -> None:
    double = TokenEndpointDouble(lambda n: httpx.Response(status, text="down"))
    with pytest.raises(RetryableError) as caught:
        provider(double).token(SCOPE)
    assert caught.value.downstream_status == status
    _no_secrets(caught.value, double)


def test_throttled_is_retryable_with_retry_after() -> None:
    double = TokenEndpointDouble(lambda n: httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(RetryableError) as caught:
        provider(double).token(SCOPE)
    assert caught.value.retry_after == 7


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"), httpx.ConnectTimeout("slow"), httpx.ConnectError("no")])
def test_timeouts_and_transport_errors_are_retryable(error: httpx.HTTPError) -> None:
    def respond(n: int) -> httpx.Response:
        raise error

    double = TokenEndpointDouble(respond)
    with pytest.raises(RetryableError) as caught:
        provider(double).token(SCOPE)
    _no_secrets(caught.value, double)


@pytest.mark.parametrize(
    "body", [{"token_type": "bearer", "expires_in": 300}, {"access_token": "", "expires_in": 300}, ["x"]]
)
def test_malformed_success_is_auth_error(body: Any) -> None:
    double = TokenEndpointDouble(lambda n: httpx.Response(200, json=body))
    with pytest.raises(AuthError):
        provider(double).token(SCOPE)


def test_failures_are_not_cached() -> None:
    answers = [httpx.Response(503), httpx.Response(200, json=TokenEndpointDouble.grant(2))]
    double = TokenEndpointDouble(lambda n: answers[n - 1])
    p = provider(double)
    with pytest.raises(RetryableError):
        p.token(SCOPE)
    assert p.token(SCOPE) == "token-2"


# --- keys ---------------------------------------------------------------------------------------------------


def _pem(key: Any, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))


def test_load_key_file_rsa_and_ec(tmp_path: Path) -> None:
    (tmp_path / "rsa.pem").write_bytes(_pem(RSA_KEY, serialization.PrivateFormat.TraditionalOpenSSL))
    (tmp_path / "ec.pem").write_bytes(_pem(EC_KEY))
    rsa_key, ec_key = load_key_file(tmp_path / "rsa.pem"), load_key_file(tmp_path / "ec.pem")
    assert (rsa_key.algorithm, ec_key.algorithm) == ("RS384", "ES384")
    assert rsa_key.kid == jwk_thumbprint(RSA_KEY.public_key())
    assert load_key_file(tmp_path / "rsa.pem", kid="k1").kid == "k1"


def test_kid_is_the_rfc7638_thumbprint() -> None:
    for key in (RSA_KEY, EC_KEY):
        jwk = public_jwk(key.public_key())
        required = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
        canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
        digest = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
        assert jwk["kid"] == digest == jwk_thumbprint(key.public_key())
        # the JWK is usable as-is by a verifier
        assert jwt.PyJWK(jwk).key is not None


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505 (the point: it is refused)
        ec.generate_private_key(ec.SECP256R1()),
    ],
)
def test_weak_or_unsupported_keys_refused(key: Any, tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(_pem(key))
    with pytest.raises(ConfigurationError):
        load_key_file(tmp_path / "k.pem")


def test_algorithm_must_fit_the_key() -> None:
    with pytest.raises(ConfigurationError):
        SigningKey(kid="k", algorithm="ES384", private_key=RSA_KEY)


def test_missing_key_file_is_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        load_key_file(tmp_path / "absent.pem")


class FakeCryptographyClient:
    """Signs as Key Vault does: over a SHA-384 digest; EC signatures come back as raw r || s."""

    def __init__(self, key: Any, fail: Exception | None = None) -> None:
        self.key, self.fail, self.calls = key, fail, 0

    def sign(self, algorithm: Any, digest: bytes, **kwargs: Any) -> Any:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        assert len(digest) == 48
        if isinstance(self.key, rsa.RSAPrivateKey):
            assert str(algorithm) in ("RS384", "SignatureAlgorithm.rs384")
            sig = self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA384()))
        else:
            r, s = decode_dss_signature(self.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA384()))))
            sig = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return type("SignResult", (), {"signature": sig})()


@pytest.mark.parametrize(("private_key", "alg"), [(RSA_KEY, "RS384"), (EC_KEY, "ES384")])
def test_key_vault_signing_key_signs_verifiable_assertions(private_key: Any, alg: str) -> None:
    crypto = FakeCryptographyClient(private_key)
    signer = KeyVaultSigningKey.for_public_key(private_key.public_key(), crypto)
    assert signer.algorithm == alg
    assertion = SmartBackendTokenProvider(TOKEN_URL, CLIENT_ID, signer).client_assertion()
    assert decode(assertion, private_key.public_key(), alg)["iss"] == CLIENT_ID
    assert crypto.calls == 1


@pytest.mark.parametrize("private_key", [RSA_KEY, EC_KEY])
def test_public_key_from_a_key_vault_jwk(private_key: Any) -> None:
    from azure.keyvault.keys import JsonWebKey

    from shared.adapters.smart_backend import _public_key_from_vault_jwk

    members = public_jwk(private_key.public_key())
    decoded = {k: base64.urlsafe_b64decode(members[k] + "==") for k in ("n", "e", "x", "y") if k in members}
    kty = "RSA-HSM" if members["kty"] == "RSA" else "EC-HSM"
    vault_jwk = JsonWebKey(kty=kty, crv=members.get("crv"), **decoded)
    assert jwk_thumbprint(_public_key_from_vault_jwk(vault_jwk)) == members["kid"]


def test_key_vault_refusal_is_auth_error() -> None:
    error = HttpResponseError(message="Forbidden")
    error.status_code = 403
    signer = KeyVaultSigningKey.for_public_key(RSA_KEY.public_key(), FakeCryptographyClient(RSA_KEY, fail=error))
    with pytest.raises(AuthError):
        provider(TokenEndpointDouble(), signer).token(SCOPE)


# --- key references and the factory -------------------------------------------------------------------------


def test_parse_key_name() -> None:
    assert parse_key_name("file:/run/keys/smart.pem").path == Path("/run/keys/smart.pem")
    ref = parse_key_name("kv:https://my-vault.vault.azure.net/smart-epic")
    assert (ref.kind, ref.vault_url, ref.name, ref.version) == (
        "kv",
        "https://my-vault.vault.azure.net",
        "smart-epic",
        None,
    )
    ref = parse_key_name("kv:https://my-vault.vault.azure.net/keys/smart-epic/0123abcd")
    assert (ref.name, ref.version) == ("smart-epic", "0123abcd")
    for bad in ("smart-epic", "file:", "kv:http://my-vault.vault.azure.net/k", "kv:https://v.vault.azure.net/", "kv:x"):
        with pytest.raises(ConfigurationError):
            parse_key_name(bad)


def _target(auth: dict[str, Any]) -> TargetConfig:
    return TargetConfig.model_validate({"id": "epic", "base_url": "https://ehr.example/fhir/R4", "auth": auth})


def _smart_auth(key_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "smart_backend_services",
        "token_url": TOKEN_URL,
        "client_id": CLIENT_ID,
        "key_name": key_name,
        "scope": SCOPE,
        **extra,
    }


def test_factory_returns_a_shared_smart_provider(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(_pem(EC_KEY))
    target = _target(_smart_auth(f"file:{tmp_path / 'k.pem'}"))
    try:
        a = token_provider_for(target, managed_identity_client_id=None)
        b = token_provider_for(target, managed_identity_client_id=None)
        assert isinstance(a, SmartBackendTokenProvider) and a is b
        assert a.token_url == TOKEN_URL and a.client_id == CLIENT_ID
        header = jwt.get_unverified_header(a.client_assertion())
        assert header["alg"] == "ES384" and header["kid"] == jwk_thumbprint(EC_KEY.public_key())
    finally:
        reset_smart_providers()


def test_factory_loads_the_key_lazily(tmp_path: Path) -> None:
    target = _target(_smart_auth(f"file:{tmp_path / 'absent.pem'}"))
    try:
        p = token_provider_for(target, managed_identity_client_id=None)  # no I/O yet
        assert p is not None
        with pytest.raises(ConfigurationError):
            p.token(SCOPE)
    finally:
        reset_smart_providers()


@pytest.mark.parametrize(
    "auth",
    [
        {k: v for k, v in _smart_auth("file:/k.pem").items() if k != "scope"},
        _smart_auth("my-key"),
    ],
)
def test_factory_configuration_errors(auth: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        token_provider_for(_target(auth), managed_identity_client_id=None)


# --- the local token endpoint's checks, in-process ----------------------------------------------------------


def _authority() -> Authority:
    jwks = {"keys": [public_jwk(RSA_KEY.public_key()), public_jwk(EC_KEY.public_key())]}
    return Authority(client_id=CLIENT_ID, jwks=jwks, ttl=300, token_url=TOKEN_URL)


def _form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": SCOPE,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def _assertion(key: Any = RSA_KEY, alg: str = "RS384", **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": TOKEN_URL, "iat": now, "exp": now + 300}
    claims |= {"jti": str(uuid.uuid4()), **overrides}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": jwk_thumbprint(key.public_key())})


def test_authority_grants_a_good_assertion() -> None:
    authority = _authority()
    for key, alg in ((RSA_KEY, "RS384"), (EC_KEY, "ES384")):
        grant = authority.grant(_form(_assertion(key, alg)))
        assert grant["scope"] == SCOPE and grant["expires_in"] == 300
        assert authority.introspect(grant["access_token"])["active"] is True
    assert authority.stats()["tokens_issued"] == 2


@pytest.mark.parametrize(
    ("assertion", "error"),
    [
        (lambda: _assertion(alg="RS256"), "invalid_client"),
        (lambda: _assertion(exp=int(time.time()) + 600), "invalid_client"),
        (lambda: _assertion(exp=None), "invalid_client"),
        (lambda: _assertion(exp=int(time.time()) - 60), "invalid_client"),
        (lambda: _assertion(aud="https://elsewhere/token"), "invalid_client"),
        (lambda: _assertion(iss="someone-else"), "invalid_client"),
        (lambda: _assertion(sub="someone-else"), "invalid_client"),
        (lambda: _assertion(jti=None), "invalid_client"),
        (lambda: "not-a-jwt", "invalid_client"),
    ],
)
def test_authority_refuses_bad_assertions(assertion: Callable[[], str], error: str) -> None:
    with pytest.raises(RefusedError) as caught:
        _authority().grant(_form(assertion()))
    assert caught.value.error == error


def test_authority_refuses_replay_and_bad_grants() -> None:
    authority, assertion = _authority(), _assertion()
    authority.grant(_form(assertion))
    with pytest.raises(RefusedError) as caught:
        authority.grant(_form(assertion))
    assert (caught.value.status, caught.value.error) == (400, "invalid_grant")
    for field, value, error in (
        ("grant_type", "password", "unsupported_grant_type"),
        ("client_assertion_type", "urn:other", "invalid_request"),
        ("scope", "", "invalid_scope"),
    ):
        with pytest.raises(RefusedError) as caught:
            authority.grant({**_form(_assertion()), field: value})
        assert caught.value.error == error


@pytest.mark.parametrize(
    ("token_url", "sent"),
    [("http://ehr.example/oauth2/token", False), ("http://10.0.0.4/token", False), ("http://127.0.0.1:9/token", True)],
)
def test_no_client_assertion_over_plain_http_off_loopback(token_url: str, sent: bool) -> None:
    double = TokenEndpointDouble()
    p = SmartBackendTokenProvider(token_url, CLIENT_ID, SigningKey.from_private_key(RSA_KEY), http=double.client())
    if sent:
        assert p.token(SCOPE) == "token-1"
    else:
        with pytest.raises(AuthError, match="refused to send a client assertion over plain http"):
            p.token(SCOPE)
    assert len(double.forms) == (1 if sent else 0)
