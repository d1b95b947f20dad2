"""The emulation's side of OpenID Connect: the provider's metadata and keys, token validation, the code exchange.

As App Service does with ``openIdIssuer``, the metadata comes from ``{issuer}/.well-known/openid-configuration``
and the signing keys from its ``jwks_uri``; both are fetched when first needed and kept, and the keys are fetched
again when a token names an unknown ``kid`` (at most every 30 s), so a provider that rotated its key is followed.

A token is accepted when its RS256 signature verifies with the provider's key, ``iss`` is the issuer, ``aud`` is
one of the allowed audiences, and ``exp`` / ``nbf`` hold with five minutes of clock skew (the default of the .NET
token validation App Service's module is built on).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK

KEY_REFETCH_SECONDS = 30.0
CLOCK_SKEW_SECONDS = 300


class ProviderUnavailableError(Exception):
    """The OpenID provider did not answer as expected."""


class TokenRefusedError(Exception):
    """A token was not accepted; the message says why (never the token)."""


@dataclass(frozen=True)
class ProviderMetadata:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


class OpenIdClient:
    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._timeout = timeout
        self._metadata: ProviderMetadata | None = None
        self._keys: dict[str, PyJWK] = {}
        self._keys_fetched_at: float | None = None

    async def _get(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                resp = await http.get(url)
            resp.raise_for_status()
            document = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailableError(f"{url}: {exc}") from None
        if not isinstance(document, dict):
            raise ProviderUnavailableError(f"{url}: not a JSON object")
        return document

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is None:
            document = await self._get(f"{self.issuer}/.well-known/openid-configuration")
            if document.get("issuer") != self.issuer:
                raise ProviderUnavailableError(f"the discovery document names issuer {document.get('issuer')!r}")
            try:
                self._metadata = ProviderMetadata(
                    authorization_endpoint=str(document["authorization_endpoint"]),
                    token_endpoint=str(document["token_endpoint"]),
                    jwks_uri=str(document["jwks_uri"]),
                    end_session_endpoint=document.get("end_session_endpoint"),
                )
            except KeyError as exc:
                raise ProviderUnavailableError(f"the discovery document has no {exc}") from None
        return self._metadata

    def cached_metadata(self) -> ProviderMetadata | None:
        return self._metadata

    async def _key(self, kid: str) -> PyJWK:
        now = self._clock()
        stale = self._keys_fetched_at is None or now - self._keys_fetched_at >= KEY_REFETCH_SECONDS
        if kid not in self._keys and stale:
            document = await self._get((await self.metadata()).jwks_uri)
            keys = {}
            for entry in document.get("keys", []):
                if isinstance(entry, dict) and entry.get("kty") == "RSA" and isinstance(entry.get("kid"), str):
                    keys[entry["kid"]] = PyJWK(entry, algorithm="RS256")
            self._keys, self._keys_fetched_at = keys, now
        if kid not in self._keys:
            raise TokenRefusedError("signed with a key the provider does not publish")
        return self._keys[kid]

    async def validate(self, token: str, audiences: Sequence[str], *, nonce: str | None = None) -> dict[str, Any]:
        """The claims of ``token``; raises ``TokenRefusedError`` or ``ProviderUnavailableError``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefusedError("not a signed JWT") from None
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str):
            raise TokenRefusedError("not an RS256 token with a key id")
        key = await self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=list(audiences),
                issuer=self.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefusedError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefusedError("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRefusedError("the token's audience is not allowed") from None
        except jwt.InvalidIssuerError:
            raise TokenRefusedError("the token's issuer is not the configured one") from None
        except jwt.PyJWTError as exc:
            raise TokenRefusedError(f"the token is not valid ({type(exc).__name__})") from None
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenRefusedError("the ID token's nonce is not the one this sign-in sent")
        return claims

    async def redeem(self, code: str, redirect_uri: str) -> dict[str, Any]:
        """The token response for an authorization code; raises ``TokenRefusedError`` when the provider says no."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        form |= {"client_id": self.client_id, "client_secret": self._client_secret}
        endpoint = (await self.metadata()).token_endpoint
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                resp = await http.post(endpoint, data=form)
            answer = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailableError(f"{endpoint}: {exc}") from None
        if resp.status_code != 200 or not isinstance(answer, dict):
            error = answer.get("error") if isinstance(answer, dict) else None
            detail = f"{resp.status_code} {error}" if error else str(resp.status_code)
            raise TokenRefusedError(f"the provider refused the code ({detail})")
        return answer
