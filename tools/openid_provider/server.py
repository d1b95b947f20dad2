"""The local OpenID provider's HTTP endpoints, laid out as Microsoft Entra ID's (v2.0) under ``/<tenant id>/``:

- ``GET  /<tid>/v2.0/.well-known/openid-configuration``  discovery (OpenID Connect Discovery 1.0); the issuer is
  ``http://127.0.0.1:<port>/<tid>/v2.0``
- ``GET  /<tid>/discovery/v2.0/keys``                     the JWKS
- ``GET  /<tid>/oauth2/v2.0/authorize``                   the sign-in form: one button per demo person
- ``POST /<tid>/oauth2/v2.0/authorize``                   the chosen person: a code (single use, 10 minutes) sent to
  the redirect URI
- ``POST /<tid>/oauth2/v2.0/token``                       ``authorization_code`` (PKCE S256 optional, required for
  public clients) and ``client_credentials``
- ``GET  /<tid>/oauth2/v2.0/logout``                      RP-initiated logout: back to a registered origin

There is no single sign-on session and no consent: every authorization shows the form.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit

from tools.loopback_http import JsonHandler, LoopbackServer
from tools.openid_provider.directory import Directory, User
from tools.openid_provider.pages import CONTENT_SECURITY_POLICY, error_page, sign_in_page, signed_out_page
from tools.openid_provider.requests import (
    AuthorizationRequest,
    OAuthError,
    authenticate_client,
    parse_authorization,
    parse_scopes,
    pkce_matches,
)
from tools.openid_provider.tokens import GRAPH_APP_ID, TOKEN_SECONDS, TokenMinter
from tools.token_endpoint import SigningKey

CODE_SECONDS = 600
MAX_FORM_BYTES = 64 * 1024
CLAIMS_SUPPORTED = ["aud", "iss", "iat", "nbf", "exp", "tid", "oid", "sub", "name", "preferred_username", "nonce"]
CLAIMS_SUPPORTED += ["roles", "ver"]
AUTHORIZE_FIELDS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)


@dataclass(frozen=True)
class _Grant:
    request: AuthorizationRequest
    user: User
    expires: float


class OpenIdProvider(LoopbackServer):
    def __init__(self, port: int, directory: Directory, key: SigningKey) -> None:
        super().__init__(port, ProviderHandler)
        self.directory = directory
        self.prefix = f"/{directory.tenant_id}"
        self.issuer = f"{self.base_url}{self.prefix}/v2.0"
        self.minter = TokenMinter(key=key, issuer=self.issuer, directory=directory)
        self._codes: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"{self.base_url}{self.prefix}{path}"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/oauth2/v2.0/authorize"),
            "token_endpoint": self.url("/oauth2/v2.0/token"),
            "jwks_uri": self.url("/discovery/v2.0/keys"),
            "end_session_endpoint": self.url("/oauth2/v2.0/logout"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": CLAIMS_SUPPORTED,
        }

    def issue_code(self, request: AuthorizationRequest, user: User) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._codes = {c: g for c, g in self._codes.items() if g.expires > now}
            self._codes[code] = _Grant(request, user, now + CODE_SECONDS)
        return code

    def redeem_code(self, code: str) -> _Grant | None:
        with self._lock:
            grant = self._codes.pop(code, None)
        return grant if grant is not None and grant.expires > time.time() else None


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (unquote(client_id), unquote(secret)) if sep else None


class ProviderHandler(JsonHandler):
    server: OpenIdProvider
    log_name = "openid-provider"

    # --- plumbing -------------------------------------------------------------------------------------------------

    def _html(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _form(self) -> dict[str, str] | None:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_FORM_BYTES:
            self._json(413 if length.isdigit() else 411, {"error": "invalid_request", "error_description": "body"})
            return None
        raw = self.rfile.read(int(length)).decode("utf-8", errors="replace")
        return dict(parse_qsl(raw, keep_blank_values=True))

    def _route(self, path: str) -> str | None:
        prefix = self.server.prefix
        return path[len(prefix) :] if path.startswith(prefix + "/") else None

    # --- GET ------------------------------------------------------------------------------------------------------

    def get(self, url: SplitResult) -> None:
        route = self._route(url.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        if route == "/v2.0/.well-known/openid-configuration":
            self._json(200, self.server.discovery())
        elif route == "/discovery/v2.0/keys":
            self._json(200, {"keys": [self.server.minter.key.jwk]})
        elif route == "/oauth2/v2.0/authorize":
            self._authorize(query, chosen=None)
        elif route == "/oauth2/v2.0/logout":
            self._logout(query)
        else:
            self._not_found(url.path)

    def _authorize(self, params: dict[str, str], chosen: str | None) -> None:
        try:
            request = parse_authorization(params, self.server.directory)
        except OAuthError as err:
            if not err.to_client:
                self._html(400, error_page(err.error, err.description))
            else:
                error = {"error": err.error, "error_description": err.description}
                self._send_to_client(params["redirect_uri"], error, params.get("state"))
            return
        if chosen is None:
            fields = {name: params[name] for name in AUTHORIZE_FIELDS if params.get(name)}
            users = self.server.directory.users.values()
            action = f"{self.server.prefix}/oauth2/v2.0/authorize"
            self._html(200, sign_in_page(action, request.client.display_name, fields, users))
            return
        user = self.server.directory.users.get(chosen)
        if user is None:
            self._html(400, error_page("invalid_request", "no such person in the directory"))
            return
        code = self.server.issue_code(request, user)
        self._send_to_client(request.redirect_uri, {"code": code}, request.state)

    def _send_to_client(self, redirect_uri: str, values: dict[str, str], state: str | None) -> None:
        if state:
            values = {**values, "state": state}
        separator = "&" if urlsplit(redirect_uri).query else "?"
        self._redirect(f"{redirect_uri}{separator}{urlencode(values)}")

    def _logout(self, query: dict[str, str]) -> None:
        target = query.get("post_logout_redirect_uri")
        if not target:
            self._html(200, signed_out_page())
            return
        directory = self.server.directory
        client_id = query.get("client_id")
        candidates = [directory.client(client_id)] if client_id else [directory.site, *directory.clients.values()]
        if any(c is not None and c.origin_allowed(target) for c in candidates):
            self._redirect(target)
        else:
            self._html(400, error_page("invalid_request", "post_logout_redirect_uri is not a registered origin"))

    # --- POST -----------------------------------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        route = self._route(urlsplit(self.path).path)
        if route not in ("/oauth2/v2.0/authorize", "/oauth2/v2.0/token"):
            self._not_found(self.path)
            return
        form = self._form()
        if form is None:
            return
        if route == "/oauth2/v2.0/authorize":
            self._authorize(form, chosen=form.get("login", ""))
            return
        try:
            self._json(200, self._token(form))
        except OAuthError as err:
            headers = {"WWW-Authenticate": "Basic"} if err.status == 401 else None
            self._json(err.status, {"error": err.error, "error_description": err.description}, headers)

    def _token(self, form: dict[str, str]) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        directory, minter = self.server.directory, self.server.minter
        basic = _basic_credentials(self.headers.get("Authorization"))
        if grant_type == "client_credentials":
            client = authenticate_client(form, basic, directory, secret_required=True)
            scope = form.get("scope", "")
            resource, _, name = scope.rpartition("/")
            if name != ".default" or resource not in directory.site.resource_ids:
                raise OAuthError("invalid_scope", "client credentials take one scope: <resource>/.default")
            token = minter.app_token(client, directory.site.client_id)
            return {"token_type": "Bearer", "access_token": token, "expires_in": TOKEN_SECONDS}
        if grant_type != "authorization_code":
            raise OAuthError("unsupported_grant_type", "authorization_code and client_credentials only")
        grant = self.server.redeem_code(form.get("code", ""))
        if grant is None:
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        request = grant.request
        client = authenticate_client(form, basic, directory, secret_required=not request.client.public)
        if client.client_id != request.client.client_id or form.get("redirect_uri") != request.redirect_uri:
            raise OAuthError("invalid_grant", "the code was issued to another client or redirect_uri")
        if request.code_challenge is not None and not pkce_matches(
            form.get("code_verifier", ""), request.code_challenge
        ):
            raise OAuthError("invalid_grant", "the code_verifier does not match the code_challenge")
        scopes = request.scopes if not form.get("scope") else parse_scopes(form["scope"], directory)
        if scopes.delegated:
            access = minter.delegated_token(grant.user, client, directory.site.client_id, list(scopes.delegated))
        else:
            access = minter.delegated_token(grant.user, client, GRAPH_APP_ID, ["openid", "profile", "email"])
        answer: dict[str, Any] = {"token_type": "Bearer", "access_token": access, "expires_in": TOKEN_SECONDS}
        answer["scope"] = scopes.text
        if "openid" in scopes.openid:
            answer["id_token"] = minter.id_token(grant.user, client, request.nonce)
        return answer
