"""App Service Authentication in front of the app: every request passes through here before any function sees it
(learn.microsoft.com/azure/app-service/overview-authentication-authorization, "How it works").

For each request, in order:

1. every ``X-MS-CLIENT-PRINCIPAL*`` and ``X-MS-TOKEN-*`` header the client sent is removed (only the module sets
   them: configure-authentication-user-identities);
2. ``/.auth/...`` is answered by the module itself (``devhost.easyauth.endpoints``);
3. a path in ``excludedPaths`` goes to the app unauthenticated (``devhost.easyauth.paths``);
4. a bearer token that is not accepted gets 401; a caller identified by a valid token or session cookie goes to the
   app with ``X-MS-CLIENT-PRINCIPAL``, ``-ID``, ``-NAME`` and ``-IDP`` (``devhost.easyauth.principal``);
5. a caller with no credentials gets the site's ``unauthenticatedClientAction``: ``Return401`` (with the
   ``WWW-Authenticate`` challenge the Microsoft provider sends), ``Return403``, ``RedirectToLoginPage`` (302 to
   ``/.auth/login/aad`` coming back to the page asked for), or ``AllowAnonymous`` (on to the app, no principal).

The runtime's own routes (``/runtime/...``) are not the site's: they stand for the host's internal endpoints (the
Durable client's RPC endpoint, which the worker reaches on localhost) and for the Service Bus namespace, which App
Service Authentication never sees. They pass untouched.

In Azure the module runs beside each instance with one shared configuration and key. Here the middleware wraps each
runtime instance's ASGI app, and every instance reads the same ``easyauth.json``, the same provider and the same
cookie key (``<state dir>/easyauth``): a session begun on one instance is valid on any other.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from devhost.easyauth.asgi import TEXT, Headers, header, respond
from devhost.easyauth.config import EasyAuthSettings
from devhost.easyauth.cookies import CookieSealer, load_or_create_key
from devhost.easyauth.endpoints import LOGIN, AuthEndpoints
from devhost.easyauth.openid import OpenIdClient, ProviderUnavailableError, TokenRefusedError
from devhost.easyauth.paths import check_excluded_paths, is_excluded
from devhost.easyauth.sessions import SessionAuthenticator
from devhost.http_functions import route_path

log = logging.getLogger("devhost.easyauth")

RUNTIME_PREFIX = "/runtime/"
_STRIPPED = (b"x-ms-client-principal", b"x-ms-token-")


def _client_sent_identity(name: bytes) -> bool:
    return name.lower().startswith(_STRIPPED)


class EasyAuthMiddleware:
    def __init__(self, app: ASGIApp, settings: EasyAuthSettings) -> None:
        self.app = app
        self.settings = settings
        self.excluded = check_excluded_paths(settings.site.excluded_paths)
        openid = OpenIdClient(
            issuer=settings.issuer, client_id=settings.client_id, client_secret=settings.client_secret
        )
        sealer = CookieSealer(load_or_create_key(settings.key_dir))
        self.auth = SessionAuthenticator(settings, sealer, openid)
        self.endpoints = AuthEndpoints(self.auth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path.startswith(RUNTIME_PREFIX):
            await self.app(scope, receive, send)
            return
        headers: Headers = [(n, v) for n, v in scope["headers"] if not _client_sent_identity(n)]
        if path.lower() == "/.auth" or path.lower().startswith("/.auth/"):
            await self.endpoints.handle(scope, path, headers, send)
            return
        if is_excluded(path, self.excluded):
            await self.app({**scope, "headers": headers}, receive, send)
            return
        try:
            caller = await self.auth.authenticate(headers)
        except TokenRefusedError as exc:
            log.info("%s %s: bearer token refused: %s", scope["method"], path, exc)
            await self._challenge(send, headers, f"the bearer token was refused: {exc}")
            return
        except ProviderUnavailableError as exc:
            await respond(send, 503, f"The OpenID provider did not answer: {exc}".encode(), TEXT)
            return
        if caller is not None:
            await self.app({**scope, "headers": headers + caller.principal.headers()}, receive, send)
            return
        action = self.settings.site.unauthenticated_action
        if action == "AllowAnonymous":
            await self.app({**scope, "headers": headers}, receive, send)
        elif action == "Return403":
            await respond(send, 403, b"You do not have permission to view this directory or page.", TEXT)
        elif action == "RedirectToLoginPage":
            wanted = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            location = f"{LOGIN}?post_login_redirect_uri={quote(wanted, safe='/')}"
            await respond(send, 302, headers=[("location", location)])
        else:
            await self._challenge(send, headers, "sign in, or send a bearer token")

    async def _challenge(self, send: Send, headers: Headers, why: str) -> None:
        # The Microsoft provider's challenge names where to get a token and for which app (login.disableWWWAuthenticate
        # turns it off in Azure).
        challenge = f'Bearer realm="{header(headers, "host") or ""}"'
        metadata = self.auth.openid.cached_metadata()
        if metadata is not None:
            challenge += f' authorization_uri="{metadata.authorization_endpoint}"'
        challenge += f' resource_id="{self.settings.client_id}"'
        body = f"401 Unauthorized: {why}.".encode()
        await respond(send, 401, body, TEXT, [("www-authenticate", challenge)])
