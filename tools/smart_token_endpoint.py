"""A loopback stand-in for an EHR's SMART Backend Services token endpoint (Epic, Oracle Health...).

``POST /token`` takes the OAuth 2.0 client-credentials grant with a JWT client assertion (RFC 7523) and checks it as
an EHR does: ``grant_type=client_credentials``, ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
jwt-bearer``, a ``scope``, and an assertion with ``alg`` RS384 or ES384 only, a ``kid`` found in the registered
client's JWKS, a valid signature, ``iss`` = ``sub`` = the client id, ``aud`` = this endpoint's token URL, ``exp``
present, not past and at most five minutes ahead, and a ``jti`` never seen before (a replay gets ``400
invalid_grant``). It answers with an opaque bearer token, ``expires_in`` and the granted ``scope``.

Also: ``POST /introspect`` (RFC 7662, ``token=...``: is it one of ours, its scope and client), ``GET /healthz``,
``GET /_control/stats`` (``tokens_issued``, ``requests``, ``refused``), ``POST /_control/fail?status=503&count=1``
(the next ``count`` token requests get ``status``) and ``POST /_control/reset`` (zero the counters).

    python -m tools.smart_token_endpoint --port 8105 --client-id gateway --jwks-file jwks.json [--ttl 300]

Nothing here is a secret worth keeping: the tokens are random strings that only this process knows.
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

import jwt

from tools.loopback_http import JsonHandler, LoopbackServer, serve_until_stopped

TOKEN_PATH = "/token"  # noqa: S105 (a URL path)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300  # seconds ahead of now that exp may lie
LEEWAY = 5  # clock skew allowed on exp / iat


class RefusedError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@dataclass
class Authority:
    """The registered client, the tokens issued and the assertions (``jti``) already used."""

    client_id: str
    jwks: dict[str, Any]
    ttl: int
    token_url: str
    tokens_issued: int = 0
    requests: int = 0
    refused: int = 0
    fail_status: int = 0
    fail_count: int = 0
    _seen_jti: dict[str, float] = field(default_factory=dict)  # jti -> exp (forgotten once exp has passed)
    _tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key_for(self, kid: str) -> Any:
        for jwk in self.jwks.get("keys", []):
            if isinstance(jwk, dict) and jwk.get("kid") == kid:
                return jwt.PyJWK(jwk).key
        raise RefusedError(401, "invalid_client", "no registered key with this kid")

    def grant(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.requests += 1
            if self.fail_count > 0:
                self.fail_count -= 1
                raise RefusedError(self.fail_status, "temporarily_unavailable", "injected failure")
        if form.get("grant_type") != "client_credentials":
            raise RefusedError(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise RefusedError(400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion", "")
        if not assertion:
            raise RefusedError(400, "invalid_request", "client_assertion is required")
        scope = form.get("scope", "").strip()
        if not scope:
            raise RefusedError(400, "invalid_scope", "scope is required")
        claims = self.verify(assertion)
        if form.get("client_id") not in (None, self.client_id):
            raise RefusedError(401, "invalid_client", "client_id does not match the assertion")
        with self._lock:
            now = time.time()
            self._seen_jti = {j: exp for j, exp in self._seen_jti.items() if exp + LEEWAY >= now}
            jti = str(claims["jti"])
            if jti in self._seen_jti:
                raise RefusedError(400, "invalid_grant", "client assertion already used (jti replay)")
            self._seen_jti[jti] = float(claims["exp"])
            token = secrets.token_urlsafe(32)
            self._tokens[token] = {"scope": scope, "client_id": self.client_id, "exp": int(now) + self.ttl}
            self.tokens_issued += 1
        return {"access_token": token, "token_type": "bearer", "expires_in": self.ttl, "scope": scope}

    def verify(self, assertion: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            raise RefusedError(401, "invalid_client", "client assertion is not a JWT") from None
        if header.get("alg") not in ALGORITHMS:
            raise RefusedError(401, "invalid_client", f"alg must be one of {', '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise RefusedError(401, "invalid_client", "kid is required")
        key = self.key_for(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=[header["alg"]],
                audience=self.token_url,
                issuer=self.client_id,
                leeway=LEEWAY,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.InvalidTokenError as exc:
            raise RefusedError(401, "invalid_client", f"client assertion rejected ({type(exc).__name__})") from None
        if claims.get("sub") != self.client_id:
            raise RefusedError(401, "invalid_client", "sub must be the client id")
        if float(claims["exp"]) > time.time() + MAX_ASSERTION_LIFETIME + LEEWAY:
            raise RefusedError(401, "invalid_client", f"exp more than {MAX_ASSERTION_LIFETIME} s ahead")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise RefusedError(401, "invalid_client", "jti is required")
        return claims

    def introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            info = self._tokens.get(token)
        if info is None or info["exp"] < time.time():
            return {"active": False}
        return {"active": True, "token_type": "bearer", **info}

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"tokens_issued": self.tokens_issued, "requests": self.requests, "refused": self.refused}


class Handler(JsonHandler):
    server: SmartTokenServer
    log_name = "smart-token-endpoint"

    def get(self, url: SplitResult) -> None:
        if url.path == "/_control/stats":
            self._json(200, self.server.authority.stats())
        else:
            self._not_found(url.path)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        authority = self.server.authority
        if url.path == TOKEN_PATH:
            form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}
            try:
                self._json(200, authority.grant(form))
            except RefusedError as exc:
                with authority._lock:
                    authority.refused += 1
                headers = {"WWW-Authenticate": 'Bearer error="invalid_client"'} if exc.status == 401 else {}
                self._json(exc.status, {"error": exc.error, "error_description": exc.description}, headers)
        elif url.path == "/introspect":
            form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
            self._json(200, authority.introspect(form.get("token", "")))
        elif url.path == "/_control/fail":
            query = parse_qs(url.query)
            with authority._lock:
                authority.fail_status = int(query.get("status", ["503"])[0])
                authority.fail_count = int(query.get("count", ["1"])[0])
            self._json(200, {"status": authority.fail_status, "count": authority.fail_count})
        elif url.path == "/_control/reset":
            with authority._lock:
                authority.tokens_issued = authority.requests = authority.refused = authority.fail_count = 0
            self._json(200, authority.stats())
        else:
            self._not_found(url.path)


class SmartTokenServer(LoopbackServer):
    def __init__(self, port: int, client_id: str, jwks: dict[str, Any], ttl: int) -> None:
        super().__init__(port, Handler)
        self.authority = Authority(client_id=client_id, jwks=jwks, ttl=ttl, token_url=self.base_url + TOKEN_PATH)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m tools.smart_token_endpoint", description=doc)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--client-id", required=True, help="the registered client id (iss and sub of assertions)")
    parser.add_argument("--jwks-file", type=Path, required=True, help="the registered client's public JWKS (JSON)")
    parser.add_argument("--ttl", type=int, default=300, help="access token expires_in, seconds (default 300)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    jwks = json.loads(args.jwks_file.read_text())
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise SystemExit(f"{args.jwks_file}: expected a JWKS ({{'keys': [...]}})")
    server = SmartTokenServer(args.port, args.client_id, jwks, args.ttl)
    serve_until_stopped(
        server,
        f"smart-token-endpoint listening on {server.authority.token_url} (client {args.client_id}, "
        f"{len(jwks['keys'])} key(s), expires_in {args.ttl})",
    )


if __name__ == "__main__":
    main()
