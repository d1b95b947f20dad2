"""The ``/.auth`` endpoints App Service Authentication serves itself, in front of the app
(learn.microsoft.com/azure/app-service/configure-authentication-customize-sign-in-out and
configure-authentication-oauth-tokens):

- ``GET /.auth/login/aad[?post_login_redirect_uri=/path]``: starts a sign-in at the provider (authorization code
  flow, ``openid profile email``, a ``state`` and a ``nonce`` kept in the sealed ``Nonce`` cookie);
- ``GET /.auth/login/aad/callback``: redeems the code with the site's secret, validates the ID token (signature,
  issuer, ``aud`` = the site's client id, lifetime, nonce), sets ``AppServiceAuthSession`` and sends the browser to
  ``post_login_redirect_uri``, or to ``/.auth/login/done`` when there was none or it left the site;
- ``GET /.auth/me``: the signed-in caller as JSON, 401 when signed out;
- ``GET|POST /.auth/logout[?post_logout_redirect_uri=/path]``: clears the session and signs out at the provider
  (its ``end_session_endpoint``), which sends the browser back to the site (``/.auth/logout/complete`` by default).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlencode

from starlette.types import Scope, Send

from devhost.easyauth.asgi import HTML, JSON, TEXT, Headers, html_page, origin, query, respond
from devhost.easyauth.cookies import NONCE_COOKIE, SESSION_COOKIE, clear_cookie, request_cookies, set_cookie
from devhost.easyauth.openid import ProviderUnavailableError, TokenRefusedError
from devhost.easyauth.paths import safe_redirect
from devhost.easyauth.sessions import SessionAuthenticator

LOGIN = "/.auth/login/aad"
CALLBACK = "/.auth/login/aad/callback"
LOGIN_DONE = "/.auth/login/done"
LOGOUT = "/.auth/logout"
LOGOUT_COMPLETE = "/.auth/logout/complete"
ME = "/.auth/me"
SIGN_IN_SCOPES = "openid profile email"
SIGN_IN_SECONDS = 600


class AuthEndpoints:
    def __init__(self, auth: SessionAuthenticator, clock: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self._clock = clock

    async def handle(self, scope: Scope, path: str, headers: Headers, send: Send) -> None:
        route, method = path.lower().rstrip("/"), scope["method"]
        try:
            if route == LOGIN and method == "GET":
                await self._login(scope, headers, send)
            elif route == CALLBACK and method == "GET":
                await self._callback(scope, headers, send)
            elif route == ME and method == "GET":
                await self._me(headers, send)
            elif route == LOGOUT and method in ("GET", "POST"):
                await self._logout(scope, headers, send)
            elif route == LOGIN_DONE and method == "GET":
                page = html_page("You have successfully signed in", link=("/", "Return to the website"))
                await respond(send, 200, page, HTML)
            elif route == LOGOUT_COMPLETE and method == "GET":
                page = html_page("You have been signed out", link=("/", "Return to the website"))
                await respond(send, 200, page, HTML)
            else:
                await respond(send, 404, b"Not found", TEXT)
        except ProviderUnavailableError as exc:
            body = html_page("Sign-in is unavailable", f"The OpenID provider did not answer: {exc}")
            await respond(send, 503, body, HTML)

    def _secure(self, scope: Scope) -> bool:
        return scope.get("scheme") == "https"

    async def _login(self, scope: Scope, headers: Headers, send: Send) -> None:
        site = origin(scope, headers)
        target = safe_redirect(query(scope).get("post_login_redirect_uri"), site) or LOGIN_DONE
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        pending = {"state": state, "nonce": nonce, "redirect": target, "exp": int(self._clock()) + SIGN_IN_SECONDS}
        cookie = self.auth.sealer.seal(NONCE_COOKIE, pending)
        authorize = (await self.auth.openid.metadata()).authorization_endpoint
        params = {"client_id": self.auth.settings.client_id, "response_type": "code", "response_mode": "query"}
        params |= {"redirect_uri": site + CALLBACK, "scope": SIGN_IN_SCOPES, "state": state, "nonce": nonce}
        # Lax whatever the session's SameSite: the provider sends the browser back with a top-level GET.
        nonce_cookie = set_cookie(NONCE_COOKIE, cookie, path=LOGIN, same_site="Lax", secure=self._secure(scope))
        location = f"{authorize}?{urlencode(params)}"
        await respond(send, 302, headers=[("location", location), ("set-cookie", nonce_cookie)])

    async def _refuse_sign_in(self, scope: Scope, send: Send, why: str) -> None:
        cleared = clear_cookie(NONCE_COOKIE, path=LOGIN, same_site="Lax", secure=self._secure(scope))
        page = html_page("The sign-in was not completed", why, link=(LOGIN, "Sign in again"))
        await respond(send, 401, page, HTML, [("set-cookie", cleared)])

    async def _callback(self, scope: Scope, headers: Headers, send: Send) -> None:
        params = query(scope)
        pending = self.auth.sealer.open(NONCE_COOKIE, request_cookies(headers).get(NONCE_COOKIE))
        if pending is None or pending.get("exp", 0) <= self._clock() or pending.get("state") != params.get("state"):
            await self._refuse_sign_in(scope, send, "No sign-in from this browser is in progress, or it took too long.")
            return
        if "error" in params:
            why = f"The provider answered {params['error']}: {params.get('error_description', '')}"
            await self._refuse_sign_in(scope, send, why)
            return
        redirect_uri = origin(scope, headers) + CALLBACK
        try:
            tokens = await self.auth.openid.redeem(params.get("code", ""), redirect_uri)
            id_token = tokens.get("id_token")
            if not isinstance(id_token, str):
                raise TokenRefusedError("the provider returned no ID token")
            await self.auth.openid.validate(id_token, [self.auth.settings.client_id], nonce=str(pending["nonce"]))
        except TokenRefusedError as exc:
            await self._refuse_sign_in(scope, send, str(exc))
            return
        secure = self._secure(scope)
        cookies = [
            ("set-cookie", self.auth.session_cookie(id_token, secure)),
            ("set-cookie", clear_cookie(NONCE_COOKIE, path=LOGIN, same_site="Lax", secure=secure)),
        ]
        await respond(send, 302, headers=[("location", str(pending["redirect"])), *cookies])

    async def _me(self, headers: Headers, send: Send) -> None:
        try:
            caller = await self.auth.authenticate(headers)
        except TokenRefusedError:
            caller = None
        if caller is None:
            await respond(send, 401, b"", TEXT)
            return
        body = json.dumps([caller.principal.me_entry(caller.id_token)]).encode()
        await respond(send, 200, body, JSON)

    async def _logout(self, scope: Scope, headers: Headers, send: Send) -> None:
        site = origin(scope, headers)
        target = safe_redirect(query(scope).get("post_logout_redirect_uri"), site) or LOGOUT_COMPLETE
        absolute = site + target if target.startswith("/") else target
        location = target
        try:
            end_session = (await self.auth.openid.metadata()).end_session_endpoint
        except ProviderUnavailableError:
            end_session = None  # signed out here all the same
        if end_session:
            params = {"post_logout_redirect_uri": absolute, "client_id": self.auth.settings.client_id}
            location = f"{end_session}?{urlencode(params)}"
        cleared = clear_cookie(
            SESSION_COOKIE, path="/", same_site=self.auth.settings.same_site, secure=self._secure(scope)
        )
        await respond(send, 302, headers=[("location", location), ("set-cookie", cleared)])
