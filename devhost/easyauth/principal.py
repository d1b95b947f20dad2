"""The headers App Service Authentication gives the app for an authenticated caller, and ``/.auth/me``'s entry.

learn.microsoft.com/azure/app-service/configure-authentication-user-identities: ``X-MS-CLIENT-PRINCIPAL`` is base64
JSON ``{"auth_typ", "claims": [{"typ", "val"}], "name_typ", "role_typ"}``; ``X-MS-CLIENT-PRINCIPAL-ID`` and
``-NAME`` name the caller, ``-IDP`` the provider (``aad``). The claims are the token's — the ID token for a browser
session, the access token for a bearer call — after App Service's default claim mapping (.NET's inbound claim type
map), which renames a few JWT claims to their long URIs (``oid`` to the objectidentifier URI, ``roles`` to the role
URI, ``scp`` to the scope URI, ``sub`` to nameidentifier, ...) and passes the others under their JWT names. A claim
with several values (``roles``) becomes one claim per value; numbers become their decimal text.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PROVIDER = "aad"
ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
NAME_TYPE = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress"
CLAIM_TYPES = {
    "oid": "http://schemas.microsoft.com/identity/claims/objectidentifier",
    "tid": "http://schemas.microsoft.com/identity/claims/tenantid",
    "scp": "http://schemas.microsoft.com/identity/claims/scope",
    "roles": ROLE_TYPE,
    "role": ROLE_TYPE,
    "sub": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier",
    "email": NAME_TYPE,
    "upn": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn",
    "unique_name": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
    "given_name": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
    "family_name": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
    "idp": "http://schemas.microsoft.com/identity/claims/identityprovider",
    "amr": "http://schemas.microsoft.com/claims/authnmethodsreferences",
    "acr": "http://schemas.microsoft.com/claims/authnclassreference",
}
# The caller's name in X-MS-CLIENT-PRINCIPAL-NAME and /.auth/me's user_id: the first of these the token has.
_NAME_CLAIMS = ("email", "preferred_username", "upn", "unique_name", "name")

PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_ID_HEADER = "x-ms-client-principal-id"
PRINCIPAL_NAME_HEADER = "x-ms-client-principal-name"
PRINCIPAL_IDP_HEADER = "x-ms-client-principal-idp"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    return json.dumps(value, separators=(",", ":"))


def mapped_claims(token_claims: Mapping[str, Any]) -> list[dict[str, str]]:
    """The token's claims as App Service lists them: ``[{"typ", "val"}]`` in the token's order."""
    claims: list[dict[str, str]] = []
    for name, value in token_claims.items():
        typ = CLAIM_TYPES.get(name, name)
        for item in value if isinstance(value, list) else [value]:
            claims.append({"typ": typ, "val": _text(item)})
    return claims


@dataclass(frozen=True)
class ClientPrincipal:
    """An authenticated caller: the claims of the token App Service took them from."""

    token_claims: Mapping[str, Any]

    @property
    def claims(self) -> list[dict[str, str]]:
        return mapped_claims(self.token_claims)

    @property
    def user_id(self) -> str | None:
        value = self.token_claims.get("oid") or self.token_claims.get("sub")
        return str(value) if value else None

    @property
    def name(self) -> str | None:
        return next((str(self.token_claims[c]) for c in _NAME_CLAIMS if self.token_claims.get(c)), None)

    def encoded(self) -> str:
        document = {"auth_typ": PROVIDER, "claims": self.claims, "name_typ": NAME_TYPE, "role_typ": ROLE_TYPE}
        return base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode("ascii")

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The request headers the app gets (after every client-sent ``X-MS-CLIENT-PRINCIPAL*`` was removed)."""
        headers = [(PRINCIPAL_HEADER.encode(), self.encoded().encode()), (PRINCIPAL_IDP_HEADER.encode(), b"aad")]
        if self.user_id:
            headers.append((PRINCIPAL_ID_HEADER.encode(), self.user_id.encode()))
        if self.name:
            headers.append((PRINCIPAL_NAME_HEADER.encode(), self.name.encode()))
        return headers

    def me_entry(self, id_token: str | None) -> dict[str, Any]:
        """One provider's entry of ``GET /.auth/me`` (learn.microsoft.com/azure/app-service/
        configure-authentication-oauth-tokens): no ``access_token`` or ``refresh_token``, as no token store is
        emulated; the session's ID token, its expiry, the claims and the caller's name."""
        entry: dict[str, Any] = {"provider_name": PROVIDER, "user_claims": self.claims, "user_id": self.name or ""}
        if id_token is not None:
            entry["id_token"] = id_token
        expires = self.token_claims.get("exp")
        if isinstance(expires, int | float):
            entry["expires_on"] = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        return entry
