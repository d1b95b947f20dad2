"""Bearer-token validation against a JWKS served over real loopback HTTP: claims, refusals, caching, key rotation.

The JWKS server is a stdlib ``http.server`` in a thread on a free port; it counts the requests it answers, so the
tests can hold the validator to one fetch per cache lifetime and one refetch per ``min_refresh_interval``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.api.caller_identity import AUDIT_LOGGER, ROLE_APPROVE, ROLE_SUBMIT, Authenticator, JwtValidator
from shared.core.errors import UnauthenticatedError
from shared.core.models import Principal

pytestmark = pytest.mark.integration

TENANT = "72f988bf-0000-4000-8000-000000000001"
ISSUER_V2 = f"https://login.microsoftonline.com/{TENANT}/v2.0"
ISSUER_V1 = f"https://sts.windows.net/{TENANT}/"
AUDIENCE = "api://fhir-writeback"
AUDIENCE_CLIENT_ID = "11111111-2222-4333-8444-555555555555"
CLIENT_APP = "0f3c2a1e-aaaa-4bbb-8ccc-111122223333"
USER_OID = "5b5450db-eb26-4c1a-981c-ba1d25f0483d"
REFRESH = 60.0


# --- the JWKS server -----------------------------------------------------------------------------------------


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class JwksServer:
    """Serves ``keys`` as a JWKS at ``/discovery/v2.0/keys``; ``status`` other than 200 simulates an outage."""

    def __init__(self) -> None:
        self.keys: list[SigningKey] = []
        self.status = 200
        self._requests = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer._requests += 1
                    status, keys = outer.status, list(outer.keys)
                if self.path != "/discovery/v2.0/keys":
                    status = 404
                body = json.dumps({"keys": [k.jwk() for k in keys]} if status == 200 else {"error": "down"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="jwks-server", daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/discovery/v2.0/keys"

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def key1() -> SigningKey:
    return SigningKey.generate("key-1")


@pytest.fixture(scope="module")
def key2() -> SigningKey:
    return SigningKey.generate("key-2")


@pytest.fixture(scope="module")
def impostor() -> SigningKey:
    """Another key pair that claims to be key-1."""
    return SigningKey.generate("key-1")


@pytest.fixture
def jwks(key1: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [key1]
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


@pytest.fixture
def validator(jwks: JwksServer, clock: FakeClock, http: httpx.Client) -> JwtValidator:
    return JwtValidator(
        issuer=[ISSUER_V2, ISSUER_V1],
        audience=[AUDIENCE, AUDIENCE_CLIENT_ID],
        jwks_url=jwks.url,
        http=http,
        clock=clock,
        min_refresh_interval=REFRESH,
    )


@pytest.fixture
def keys_cached(validator: JwtValidator, jwks: JwksServer, key1: SigningKey, clock: FakeClock) -> None:
    """The validator has accepted one token signed with key1: the JWKS is fetched, once, and cached."""
    validator.validate(sign(key1, user_claims(clock.now)))
    assert jwks.requests == 1


@pytest.fixture
def key2_published(keys_cached: None, jwks: JwksServer, key1: SigningKey, key2: SigningKey) -> None:
    """After the validator cached the keys, Entra publishes a new one (key2) beside key1."""
    jwks.keys = [key1, key2]


@pytest.fixture(autouse=True)
def _capture_audit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=AUDIT_LOGGER)


def audit_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == AUDIT_LOGGER]


# --- tokens --------------------------------------------------------------------------------------------------


def user_claims(now: float, **overrides: Any) -> dict[str, Any]:
    """A v2 delegated (user) access token's claims, as Entra issues them."""
    claims: dict[str, Any] = {
        "iss": ISSUER_V2,
        "aud": AUDIENCE,
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 3600,
        "azp": CLIENT_APP,
        "azpacr": "1",
        "oid": USER_OID,
        "sub": "pairwise-subject-for-the-user",
        "scp": "Writeback.ReadWrite",
        "name": "Dr Jane Roe",
        "preferred_username": "jane@example.org",
        "roles": [ROLE_SUBMIT, ROLE_APPROVE],
        "tid": TENANT,
        "ver": "2.0",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: SigningKey, claims: dict[str, Any], *, kid: str | None = None) -> str:
    return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": kid or key.kid})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes | None = None, secret: bytes = b"") -> str:
    """A token assembled by hand: PyJWT rightly refuses to make these."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    if signature is None and secret:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature or b'')}"


# --- accepted ------------------------------------------------------------------------------------------------


def test_valid_user_token(validator: JwtValidator, key1: SigningKey, clock: FakeClock) -> None:
    principal = validator.validate(sign(key1, user_claims(clock.now)))

    assert principal == Principal(
        app_id=CLIENT_APP,
        user_id=USER_OID,
        display_name="Dr Jane Roe",
        roles=[ROLE_SUBMIT, ROLE_APPROVE],
        auth_type="jwt",
    )


def test_valid_v1_app_only_token(validator: JwtValidator, key1: SigningKey, clock: FakeClock) -> None:
    sp_oid = "9a8b7c6d-0000-4000-8000-00000000abcd"
    claims = user_claims(
        clock.now,
        iss=ISSUER_V1,
        aud=AUDIENCE_CLIENT_ID,
        azp=None,
        azpacr=None,
        appid=CLIENT_APP,
        oid=sp_oid,
        sub=sp_oid,
        scp=None,
        name=None,
        preferred_username=None,
        roles=[ROLE_SUBMIT],
        ver="1.0",
    )

    principal = validator.validate(sign(key1, claims))

    assert (principal.app_id, principal.user_id, principal.display_name) == (CLIENT_APP, None, None)
    assert principal.roles == [ROLE_SUBMIT]


@pytest.mark.parametrize(("idtyp", "is_user"), [("user", True), ("app", False)])
def test_idtyp_decides_whether_oid_is_a_user(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, idtyp: str, is_user: bool
) -> None:
    principal = validator.validate(sign(key1, user_claims(clock.now, scp=None, idtyp=idtyp)))
    assert principal.user_id == (USER_OID if is_user else None)


def test_token_without_roles_has_none(validator: JwtValidator, key1: SigningKey, clock: FakeClock) -> None:
    assert validator.validate(sign(key1, user_claims(clock.now, roles=None))).roles == []


@pytest.mark.parametrize("skew", [-59, 59], ids=["just expired", "almost valid"])
def test_leeway_absorbs_clock_skew(validator: JwtValidator, key1: SigningKey, clock: FakeClock, skew: int) -> None:
    now = int(clock.now)
    claims = user_claims(now, exp=now + skew) if skew < 0 else user_claims(now, nbf=now + skew)
    assert validator.validate(sign(key1, claims)).app_id == CLIENT_APP


def test_authenticator_in_jwt_mode(validator: JwtValidator, key1: SigningKey, clock: FakeClock) -> None:
    token = sign(key1, user_claims(clock.now))
    principal = Authenticator("jwt", jwt=validator).authenticate({"authorization": f"Bearer {token}"})
    assert (principal.app_id, principal.auth_type) == (CLIENT_APP, "jwt")


# --- refused -------------------------------------------------------------------------------------------------


def assert_refused(
    validator: JwtValidator, token: str, reason: str, caplog: pytest.LogCaptureFixture, *, app_id: str | None = None
) -> UnauthenticatedError:
    caplog.clear()
    with pytest.raises(UnauthenticatedError) as raised:
        validator.validate(token)
    err = raised.value
    assert err.status == 401
    assert err.detail.startswith(reason), err.detail
    (record,) = audit_records(caplog)
    assert record.levelno == logging.WARNING
    expected = {"event": "auth.refused", "reason": reason, "mode": "jwt"}
    if app_id is not None:
        expected["appId"] = app_id
    assert record.audit == expected  # type: ignore[attr-defined]
    for part in token.split("."):
        if len(part) > 8:
            assert part not in caplog.text
            assert part not in err.detail
    assert err.__cause__ is None and err.__suppress_context__
    return err


def test_expired(validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    now = int(clock.now)
    token = sign(key1, user_claims(now - 7200, exp=now - 61))
    assert_refused(validator, token, "token expired", caplog, app_id=CLIENT_APP)


def test_expiry_follows_the_injected_clock(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = sign(key1, user_claims(clock.now))
    validator.validate(token)
    clock.advance(3600 + 61)
    assert_refused(validator, token, "token expired", caplog, app_id=CLIENT_APP)


def test_not_yet_valid(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(clock.now)
    token = sign(key1, user_claims(now, nbf=now + 600, exp=now + 4200))
    assert_refused(validator, token, "token not yet valid", caplog, app_id=CLIENT_APP)


def test_wrong_audience(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = sign(key1, user_claims(clock.now, aud="api://some-other-api"))
    assert_refused(validator, token, "audience not accepted", caplog)


def test_wrong_issuer(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = sign(key1, user_claims(clock.now, iss="https://login.microsoftonline.com/other-tenant/v2.0"))
    assert_refused(validator, token, "issuer not accepted", caplog)


def test_bad_signature_from_another_key_with_the_same_kid(
    validator: JwtValidator, impostor: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    assert_refused(validator, sign(impostor, user_claims(clock.now)), "bad signature", caplog)


def test_tampered_claims(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    header, _, signature = sign(key1, user_claims(clock.now)).split(".")
    payload = b64url(
        json.dumps(user_claims(clock.now, roles=[ROLE_SUBMIT, ROLE_APPROVE, "Writeback.Operate"])).encode()
    )
    assert_refused(validator, f"{header}.{payload}.{signature}", "bad signature", caplog)


def test_alg_none(validator: JwtValidator, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "typ": "JWT", "kid": "key-1"}, user_claims(clock.now))
        assert_refused(validator, token, "algorithm not accepted", caplog)


def test_hs256_with_the_public_key_as_secret(
    validator: JwtValidator, jwks: JwksServer, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    validator.validate(sign(key1, user_claims(clock.now)))  # keys cached, so the public key is "known"
    claims = user_claims(clock.now, roles=[ROLE_APPROVE])
    secrets = [
        key1.public_pem(),
        json.dumps(key1.jwk()).encode(),
        base64.urlsafe_b64decode(key1.jwk()["n"] + "=="),
    ]
    for secret in secrets:
        for alg in ("HS256", "HS384", "HS512"):
            assert_refused(
                validator, forge({"alg": alg, "kid": key1.kid}, claims, secret=secret), "algorithm not accepted", caplog
            )
    assert jwks.requests == 1


@pytest.mark.parametrize("alg", ["RS384", "PS256", "ES256"])
def test_other_asymmetric_algorithms(
    validator: JwtValidator, clock: FakeClock, caplog: pytest.LogCaptureFixture, alg: str
) -> None:
    token = forge({"alg": alg, "kid": "key-1"}, user_claims(clock.now), signature=b"x" * 256)
    assert_refused(validator, token, "algorithm not accepted", caplog)


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", "a.b", "a.b.c", "e30.e30.", "....", "Bearer x.y.z"],
    ids=["empty", "word", "two parts", "junk parts", "empty header", "dots", "with scheme"],
)
def test_malformed(validator: JwtValidator, jwks: JwksServer, token: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with pytest.raises(UnauthenticatedError) as raised:
        validator.validate(token)
    assert raised.value.detail.split(":")[0] in {"malformed token", "algorithm not accepted"}
    assert len(audit_records(caplog)) == 1
    assert jwks.requests == 0


def test_no_kid(validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    token = jwt.encode(user_claims(clock.now), key1.private, algorithm="RS256")
    assert_refused(validator, token, "malformed token", caplog)


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_required_claim_missing(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture, claim: str
) -> None:
    err = assert_refused(validator, sign(key1, user_claims(clock.now, **{claim: None})), "missing claim", caplog)
    assert f"'{claim}'" in err.detail


def test_no_app_id(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    assert_refused(validator, sign(key1, user_claims(clock.now, azp=None)), "no app id", caplog)


def test_non_numeric_exp(
    validator: JwtValidator, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    assert_refused(validator, sign(key1, user_claims(clock.now, exp="tomorrow")), "malformed token", caplog)


# --- the JWKS: caching, rotation, refresh throttling, outages ------------------------------------------------


def test_jwks_is_fetched_lazily_and_cached(
    validator: JwtValidator, jwks: JwksServer, key1: SigningKey, clock: FakeClock
) -> None:
    assert jwks.requests == 0
    for i in range(25):
        clock.advance(30)
        validator.validate(sign(key1, user_claims(clock.now, name=f"user {i}")))
    assert jwks.requests == 1


def test_concurrent_first_use_fetches_once(
    validator: JwtValidator, jwks: JwksServer, key1: SigningKey, clock: FakeClock
) -> None:
    token = sign(key1, user_claims(clock.now))
    results: list[Principal | BaseException] = []
    barrier = threading.Barrier(16)

    def call() -> None:
        barrier.wait()
        try:
            results.append(validator.validate(token))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert len(results) == 16 and all(isinstance(r, Principal) for r in results)
    assert jwks.requests == 1


@pytest.mark.usefixtures("key2_published")
def test_new_kid_within_the_refresh_interval_waits_for_it(
    validator: JwtValidator, jwks: JwksServer, key2: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    clock.advance(REFRESH / 2)
    assert_refused(validator, sign(key2, user_claims(clock.now)), "unknown signing key", caplog)
    assert jwks.requests == 1

    clock.advance(REFRESH / 2)
    assert validator.validate(sign(key2, user_claims(clock.now))).app_id == CLIENT_APP
    assert jwks.requests == 2


@pytest.mark.usefixtures("key2_published")
def test_key_rotation_one_refetch_then_accepted(
    validator: JwtValidator,
    jwks: JwksServer,
    key1: SigningKey,
    key2: SigningKey,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Entra signs with the new key some time after publishing it, and finally withdraws the old one.
    clock.advance(REFRESH + 1)
    principal = validator.validate(sign(key2, user_claims(clock.now)))
    assert principal.app_id == CLIENT_APP
    assert jwks.requests == 2

    for _ in range(10):
        validator.validate(sign(key2, user_claims(clock.now)))
        validator.validate(sign(key1, user_claims(clock.now)))
    assert jwks.requests == 2

    jwks.keys = [key2]
    clock.advance(REFRESH + 1)
    assert_refused(validator, sign(key2, user_claims(clock.now), kid="key-3"), "unknown signing key", caplog)
    assert jwks.requests == 3
    assert_refused(validator, sign(key1, user_claims(clock.now)), "unknown signing key", caplog)
    assert validator.validate(sign(key2, user_claims(clock.now))).app_id == CLIENT_APP
    assert jwks.requests == 3


@pytest.mark.usefixtures("keys_cached")
def test_flood_of_unknown_kids_refetches_at_most_once_per_interval(
    validator: JwtValidator, jwks: JwksServer, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    for interval in range(1, 4):
        for _ in range(40):
            clock.advance((REFRESH + 1) / 40)
            token = sign(key1, user_claims(clock.now), kid=str(uuid.uuid4()))
            with pytest.raises(UnauthenticatedError, match="unknown signing key"):
                validator.validate(token)
        assert jwks.requests == 1 + interval
    assert len(audit_records(caplog)) == 120
    assert validator.validate(sign(key1, user_claims(clock.now))).app_id == CLIENT_APP


@pytest.mark.usefixtures("keys_cached")
def test_concurrent_flood_of_unknown_kids_refetches_once(
    validator: JwtValidator, jwks: JwksServer, key1: SigningKey, clock: FakeClock
) -> None:
    clock.advance(REFRESH + 1)
    tokens = [sign(key1, user_claims(clock.now), kid=f"forged-{i}") for i in range(32)]
    refusals: list[str] = []
    barrier = threading.Barrier(len(tokens))

    def call(token: str) -> None:
        barrier.wait()
        try:
            validator.validate(token)
        except UnauthenticatedError as exc:
            refusals.append(exc.detail)

    threads = [threading.Thread(target=call, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    assert refusals == ["unknown signing key"] * len(tokens)
    assert jwks.requests == 2


def test_jwks_outage_before_any_keys_refuses_then_recovers(
    validator: JwtValidator, jwks: JwksServer, key1: SigningKey, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    jwks.status = 503
    token = sign(key1, user_claims(clock.now))
    assert_refused(validator, token, "signing keys unavailable", caplog)
    assert_refused(validator, token, "signing keys unavailable", caplog)
    assert jwks.requests == 1

    jwks.status = 200
    clock.advance(REFRESH + 1)
    assert validator.validate(sign(key1, user_claims(clock.now))).app_id == CLIENT_APP
    assert jwks.requests == 2


def test_unreachable_jwks_refuses(clock: FakeClock, key1: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/discovery/v2.0/keys"  # closed again on leaving the block
    with httpx.Client(timeout=2.0) as http:
        validator = JwtValidator(issuer=ISSUER_V2, audience=AUDIENCE, jwks_url=url, http=http, clock=clock)
        assert_refused(validator, sign(key1, user_claims(clock.now)), "signing keys unavailable", caplog)


def test_jwks_outage_keeps_the_cached_keys(
    jwks: JwksServer, key1: SigningKey, clock: FakeClock, http: httpx.Client
) -> None:
    validator = JwtValidator(
        issuer=ISSUER_V2, audience=AUDIENCE, jwks_url=jwks.url, http=http, clock=clock, max_key_age=3600
    )
    validator.validate(sign(key1, user_claims(clock.now)))

    jwks.status = 500
    clock.advance(3601)
    assert validator.validate(sign(key1, user_claims(clock.now))).app_id == CLIENT_APP
    assert jwks.requests == 2


def test_cached_keys_are_refreshed_after_max_age(
    jwks: JwksServer,
    key1: SigningKey,
    key2: SigningKey,
    clock: FakeClock,
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    validator = JwtValidator(
        issuer=ISSUER_V2, audience=AUDIENCE, jwks_url=jwks.url, http=http, clock=clock, max_key_age=3600
    )
    validator.validate(sign(key1, user_claims(clock.now)))

    jwks.keys = [key2]  # key-1 withdrawn (say, compromised)
    clock.advance(3601)
    assert_refused(validator, sign(key1, user_claims(clock.now)), "unknown signing key", caplog)
    assert jwks.requests == 2


def test_jwks_entries_that_are_not_rs256_signing_keys_are_ignored(
    jwks: JwksServer, key1: SigningKey, key2: SigningKey, clock: FakeClock, http: httpx.Client
) -> None:
    class Mixed(SigningKey):
        def jwk(self) -> dict[str, Any]:
            return {**super().jwk(), "use": "enc"}

    jwks.keys = [Mixed(key2.kid, key2.private), key1]
    validator = JwtValidator(issuer=ISSUER_V2, audience=AUDIENCE, jwks_url=jwks.url, http=http, clock=clock)

    assert validator.validate(sign(key1, user_claims(clock.now))).app_id == CLIENT_APP
    with pytest.raises(UnauthenticatedError, match="unknown signing key"):
        validator.validate(sign(key2, user_claims(clock.now)))


def test_validator_owns_its_client_when_none_is_given(jwks: JwksServer, key1: SigningKey, clock: FakeClock) -> None:
    validator = JwtValidator(issuer=ISSUER_V2, audience=AUDIENCE, jwks_url=jwks.url, clock=clock)
    try:
        assert validator.validate(sign(key1, user_claims(clock.now))).app_id == CLIENT_APP
    finally:
        validator.close()
