"""Checking the requests of the OAuth 2.0 authorization code flow (RFC 6749 section 4.1, with PKCE, RFC 7636) and
of the client credentials grant (section 4.4), against the directory.

Scopes name the site as Entra does: ``api://<client id>/<scope>`` or ``<client id>/<scope>`` for a delegated
permission, ``<resource>/.default`` for everything statically granted (the only form client credentials accept);
``openid``, ``profile``, ``email`` and ``offline_access`` are OpenID Connect's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from tools.openid_provider.directory import Client, Directory
from tools.openid_provider.tokens import OPENID_SCOPES


class OAuthError(Exception):
    """An OAuth error (``error`` and ``error_description``). ``to_client`` is False when the redirect URI itself is
    in doubt: the person sees an error page and nothing is sent to the redirect URI (RFC 6749 section 4.1.2.1)."""

    def __init__(self, error: str, description: str, *, to_client: bool = True, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.to_client = to_client
        self.status = status


@dataclass(frozen=True)
class ScopeRequest:
    openid: tuple[str, ...]  # OpenID Connect scopes asked for
    delegated: tuple[str, ...]  # the site's delegated scopes asked for (empty: no access to the site)

    @property
    def text(self) -> str:
        return " ".join(self.openid + self.delegated)


@dataclass(frozen=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    scopes: ScopeRequest
    state: str | None
    nonce: str | None
    code_challenge: str | None


def parse_scopes(text: str, directory: Directory) -> ScopeRequest:
    site = directory.site
    openid: list[str] = []
    delegated: list[str] = []
    for scope in text.split():
        if scope in OPENID_SCOPES:
            openid.append(scope)
            continue
        resource, _, name = scope.rpartition("/")
        if resource not in site.resource_ids:
            raise OAuthError("invalid_scope", f"the scope {scope!r} names no resource this provider knows")
        if name == ".default":
            delegated.extend(site.scopes)
        elif name in site.scopes:
            delegated.append(name)
        else:
            raise OAuthError("invalid_scope", f"{site.display_name} exposes no scope {name!r}")
    if not openid and not delegated:
        raise OAuthError("invalid_scope", "no scope was requested")
    return ScopeRequest(tuple(dict.fromkeys(openid)), tuple(dict.fromkeys(delegated)))


def parse_authorization(params: Mapping[str, str], directory: Directory) -> AuthorizationRequest:
    """The authorization request in ``params`` (the query, or the sign-in form's fields); raises ``OAuthError``."""
    client = directory.client(params.get("client_id", ""))
    if client is None:
        raise OAuthError("unauthorized_client", "unknown client_id", to_client=False)
    redirect_uri = params.get("redirect_uri", "")
    if not client.redirect_allowed(redirect_uri):
        raise OAuthError(
            "invalid_request", f"redirect_uri is not registered for {client.display_name}", to_client=False
        )
    if params.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "only response_type=code is supported")
    if params.get("response_mode", "query") != "query":
        raise OAuthError("invalid_request", "only response_mode=query is supported")
    challenge = params.get("code_challenge") or None
    if challenge is not None and params.get("code_challenge_method") != "S256":
        raise OAuthError("invalid_request", "code_challenge_method must be S256")
    if client.public and challenge is None:
        raise OAuthError("invalid_request", "a public client must use PKCE (code_challenge)")
    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        scopes=parse_scopes(params.get("scope", ""), directory),
        state=params.get("state") or None,
        nonce=params.get("nonce") or None,
        code_challenge=challenge,
    )


def pkce_matches(verifier: str, challenge: str) -> bool:
    digest = hashlib.sha256(verifier.encode("ascii", errors="replace")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed, challenge)


def authenticate_client(
    form: Mapping[str, str], basic: tuple[str, str] | None, directory: Directory, *, secret_required: bool
) -> Client:
    """The client of a token request: by ``client_secret_basic`` or ``client_secret_post``; a public client by its
    id alone (it proves itself with the PKCE verifier). Raises ``OAuthError`` (``invalid_client``, 401)."""
    client_id, secret = basic if basic is not None else (form.get("client_id", ""), form.get("client_secret"))
    client = directory.client(client_id)
    if client is None:
        raise OAuthError("invalid_client", "unknown client", status=401)
    if client.public and not secret_required:
        return client
    expected = directory.secrets.get(client.client_id)
    if client.public or expected is None or not secret:
        raise OAuthError("invalid_client", "this grant needs a confidential client and its secret", status=401)
    if not hmac.compare_digest(secret.encode(), expected.encode()):
        raise OAuthError("invalid_client", "the client secret is wrong", status=401)
    return client
