"""Who is calling, as App Service Authentication decides it: a bearer access token, else the session cookie.

learn.microsoft.com/azure/app-service/overview-authentication-authorization: with ``Authorization: Bearer`` the
token is validated (signature, issuer, an allowed audience, lifetime) and an invalid one is refused (401) whatever
else the request carries; without it, the ``AppServiceAuthSession`` cookie a sign-in set identifies a browser
session, whose claims are the ID token's. A session lasts eight hours from the sign-in (``login.cookieExpiration``'s
default) however long its ID token lives; no token store or refresh is emulated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from devhost.easyauth.asgi import Headers, header
from devhost.easyauth.config import EasyAuthSettings
from devhost.easyauth.cookies import SESSION_COOKIE, CookieSealer, request_cookies, set_cookie
from devhost.easyauth.openid import OpenIdClient
from devhost.easyauth.principal import ClientPrincipal

SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Caller:
    principal: ClientPrincipal
    id_token: str | None  # set for a browser session


def bearer_token(headers: Headers) -> str | None:
    value = header(headers, "authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class SessionAuthenticator:
    def __init__(
        self,
        settings: EasyAuthSettings,
        sealer: CookieSealer,
        openid: OpenIdClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sealer = sealer
        self.openid = openid
        self._clock = clock

    async def authenticate(self, headers: Headers) -> Caller | None:
        """The caller, None when the request carries no credentials (or a session that does not open or has
        ended); raises ``TokenRefusedError`` for a bearer token that is not accepted."""
        token = bearer_token(headers)
        if token is not None:
            claims = await self.openid.validate(token, self.settings.allowed_audiences)
            return Caller(ClientPrincipal(claims), None)
        session = self.sealer.open(SESSION_COOKIE, request_cookies(headers).get(SESSION_COOKIE))
        if session is None or not isinstance(session.get("exp"), int) or session["exp"] <= self._clock():
            return None
        id_token = session.get("id_token")
        if not isinstance(id_token, str):
            return None
        # The ID token was validated when the session began, and the sealed cookie cannot have been changed.
        session_claims: dict[str, Any] = jwt.decode(id_token, options={"verify_signature": False})
        return Caller(ClientPrincipal(session_claims), id_token)

    def session_cookie(self, id_token: str, secure: bool) -> str:
        payload = {"id_token": id_token, "exp": int(self._clock()) + SESSION_SECONDS}
        value = self.sealer.seal(SESSION_COOKIE, payload)
        return set_cookie(SESSION_COOKIE, value, path="/", same_site=self.settings.same_site, secure=secure)
