"""A loopback stand-in for the App Service / Azure Functions managed-identity token endpoint.

It speaks the protocol ``azure.identity.ManagedIdentityCredential`` (through MSAL) uses when ``IDENTITY_ENDPOINT``
and ``IDENTITY_HEADER`` are set: ``GET /msi/token?api-version=2019-08-01&resource=<resource>[&client_id=...]`` with
the header ``X-IDENTITY-HEADER``, answered with ``{"access_token", "expires_on", "resource", "token_type"}``. The
tokens are RS256 JWTs whose public key is served at ``/.well-known/jwks.json``, so a resource server (the local FHIR
server) can verify them.

    python -m tools.token_endpoint --port 8091 --identity-header "$(openssl rand -hex 16)" [--key-file key.pem]

The identity header may come from the environment variable ``TOKEN_ENDPOINT_IDENTITY_HEADER`` instead, which keeps it
out of the process list. Nothing here is a secret worth keeping: the key is a throwaway test key.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tools.loopback_http import JsonHandler, LoopbackServer, serve_until_stopped

API_VERSION = "2019-08-01"
IDENTITY_HEADER_ENV = "TOKEN_ENDPOINT_IDENTITY_HEADER"
# Fixed fake identities, recognisable in logs; not real Entra ID objects.
DEFAULT_PRINCIPAL_ID = "00000000-0000-4000-8000-00000000f00d"
FAKE_TENANT_ID = "00000000-0000-4000-8000-0000000000aa"
# The user-assigned identity selectors App Service accepts (MSAL sends object_id for principal ids).
IDENTITY_SELECTORS = ("client_id", "object_id", "principal_id", "mi_res_id")


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass
class SigningKey:
    """An RSA key with its JWK and RFC 7638 thumbprint (used as ``kid``)."""

    private_key: rsa.RSAPrivateKey
    kid: str = field(init=False)
    jwk: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        numbers = self.private_key.public_key().public_numbers()
        e, n = _b64url_uint(numbers.e), _b64url_uint(numbers.n)
        canonical = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"), sort_keys=True)
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
        self.jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": n, "e": e}

    @classmethod
    def load(cls, path: Path | None) -> SigningKey:
        if path is None:
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return cls(key)


@dataclass
class TokenIssuer:
    """Mints the managed-identity access tokens."""

    key: SigningKey
    issuer: str
    ttl: int
    issued: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, resource: str, selector: tuple[str, str] | None) -> dict[str, Any]:
        now = int(time.time())
        exp = now + self.ttl
        principal = DEFAULT_PRINCIPAL_ID
        if selector is not None:
            name, value = selector
            # A resource id is not a GUID; derive a stable one so `oid` keeps its usual shape.
            principal = str(uuid.uuid5(uuid.NAMESPACE_URL, value)) if name == "mi_res_id" else value
        claims = {
            "aud": resource,
            "iss": self.issuer,
            "sub": principal,
            "oid": principal,
            "appid": principal,
            "tid": FAKE_TENANT_ID,
            "idtyp": "app",
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self.key.private_key, algorithm="RS256", headers={"kid": self.key.kid})
        with self._lock:
            self.issued += 1
        return {
            "access_token": token,
            "expires_on": str(exp),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": principal,
        }


class Handler(JsonHandler):
    server: TokenServer
    log_name = "token-endpoint"

    def get(self, url: SplitResult) -> None:
        if url.path == "/.well-known/jwks.json":
            self._json(200, {"keys": [self.server.issuer.key.jwk]})
        elif url.path == "/.well-known/openid-configuration":
            jwks_uri = f"{self.server.base_url}/.well-known/jwks.json"
            self._json(200, {"issuer": self.server.issuer.issuer, "jwks_uri": jwks_uri})
        elif url.path == "/msi/token":
            self._token(parse_qs(url.query))
        elif url.path == "/_control/stats":
            self._json(200, {"tokens_issued": self.server.issuer.issued})
        else:
            self._not_found(url.path)

    def _token(self, query: dict[str, list[str]]) -> None:
        presented = self.headers.get("X-IDENTITY-HEADER", "")
        if not hmac.compare_digest(presented.encode(), self.server.identity_header.encode()):
            # App Service answers a missing or wrong header with 401; MSAL turns this body into an error result.
            self._json(401, {"statusCode": 401, "message": "X-IDENTITY-HEADER is missing or wrong"})
            return
        api_version = query.get("api-version", [""])[0]
        resource = query.get("resource", [""])[0]
        if api_version != API_VERSION:
            self._json(400, {"statusCode": 400, "message": f"api-version must be {API_VERSION}"})
            return
        if not resource:
            self._json(400, {"statusCode": 400, "message": "resource is required"})
            return
        selectors = [(name, query[name][0]) for name in IDENTITY_SELECTORS if query.get(name, [""])[0]]
        if len(selectors) > 1:
            self._json(400, {"statusCode": 400, "message": "Give at most one of " + ", ".join(IDENTITY_SELECTORS)})
            return
        self._json(200, self.server.issuer.issue(resource, selectors[0] if selectors else None))


class TokenServer(LoopbackServer):
    def __init__(self, port: int, identity_header: str, key: SigningKey, ttl: int, issuer: str | None) -> None:
        super().__init__(port, Handler)
        self.identity_header = identity_header
        self.issuer = TokenIssuer(key=key, issuer=issuer or f"{self.base_url}/", ttl=ttl)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.token_endpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument(
        "--identity-header",
        default=os.environ.get(IDENTITY_HEADER_ENV),
        help=f"the value clients must send as X-IDENTITY-HEADER (default: ${IDENTITY_HEADER_ENV})",
    )
    parser.add_argument("--key-file", type=Path, help="PEM RSA private key (default: a new key per start)")
    parser.add_argument("--ttl", type=int, default=3600, help="token lifetime in seconds (default 3600)")
    parser.add_argument("--issuer", help="the iss claim (default http://127.0.0.1:PORT/)")
    args = parser.parse_args(argv)
    if not args.identity_header:
        parser.error(f"--identity-header or ${IDENTITY_HEADER_ENV} is required")
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    server = TokenServer(args.port, args.identity_header, SigningKey.load(args.key_file), args.ttl, args.issuer)
    serve_until_stopped(
        server,
        f"token-endpoint listening on {server.base_url} (IDENTITY_ENDPOINT={server.base_url}/msi/token, "
        f"JWKS {server.base_url}/.well-known/jwks.json, kid {server.issuer.key.kid})",
    )


if __name__ == "__main__":
    main()
