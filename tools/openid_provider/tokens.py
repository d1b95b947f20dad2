"""The tokens the local OpenID provider signs, shaped as Microsoft Entra ID v2.0 tokens.

Claims follow the Microsoft identity platform's references (learn.microsoft.com/entra/identity-platform/
id-token-claims-reference and access-token-claims-reference):

- **ID token** (to a client signing a person in; for App Service Authentication, to the site): ``aud`` = the client
  id, ``iss``, ``tid``, ``oid``, ``sub`` (pairwise: per person and app), ``name``, ``preferred_username``, ``roles``
  when the person holds app roles of that app, ``nonce`` when the request had one, ``ver`` 2.0. Never ``azp``,
  ``appid``, ``scp`` or ``idtyp``.
- **Delegated access token** (an app acting for a person): ``aud`` = the resource's client id, ``azp`` = the calling
  app, ``azpacr`` (1: the app used a secret, 0: public), ``scp`` = the delegated scopes, the person's ``oid``,
  ``name``, ``preferred_username`` and their ``roles`` on the resource.
- **App-only access token** (client credentials): ``aud``, ``azp``, ``azpacr``, ``oid`` = ``sub`` = the app's
  service principal, ``roles`` = the app roles granted to the app, and no ``scp``.

The signing key (RS256) is generated at the first start into the state folder and kept, so the ``kid`` stays.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tools.openid_provider.directory import Client, Directory, User
from tools.token_endpoint import SigningKey

TOKEN_SECONDS = 3600
# Microsoft Graph's app id: the audience of the access token Entra returns when only OpenID scopes were asked for.
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
OPENID_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
_PAIRWISE = uuid.UUID("6b1f0c2e-8a4d-4f5e-9b3c-2d7e1a0f4c88")


def load_or_create_key(path: Path) -> SigningKey:
    """The provider's signing key from ``path``, created (mode 0600) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.replace(temporary, path)
    return SigningKey.load(path)


def pairwise_subject(oid: str, client_id: str) -> str:
    """``sub``: stable per person and app, different across apps (as Entra's pairwise subject)."""
    return str(uuid.uuid5(_PAIRWISE, f"{oid}|{client_id}"))


def service_principal_id(client_id: str) -> str:
    """The object id of an app's service principal in the demo tenant: stable, derived from its client id."""
    return str(uuid.uuid5(_PAIRWISE, f"sp|{client_id}"))


@dataclass
class TokenMinter:
    key: SigningKey
    issuer: str
    directory: Directory
    clock: Callable[[], float] = time.time
    lifetime: int = TOKEN_SECONDS

    def _sign(self, claims: dict[str, Any]) -> str:
        now = int(self.clock())
        base = {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + self.lifetime}
        base |= {"tid": self.directory.tenant_id, "ver": "2.0", "uti": uuid.uuid4().hex[:22]}
        return jwt.encode(base | claims, self.key.private_key, algorithm="RS256", headers={"kid": self.key.kid})

    def _roles_on(self, user: User, resource_client_id: str) -> dict[str, Any]:
        # App role assignments are made on the site's registration: a person holds roles on it alone.
        if resource_client_id == self.directory.site.client_id and user.roles:
            return {"roles": list(user.roles)}
        return {}

    def id_token(self, user: User, client: Client, nonce: str | None) -> str:
        claims: dict[str, Any] = {
            "aud": client.client_id,
            "oid": user.oid,
            "sub": pairwise_subject(user.oid, client.client_id),
            "name": user.name,
            "preferred_username": user.username,
            **self._roles_on(user, client.client_id),
        }
        if nonce:
            claims["nonce"] = nonce
        return self._sign(claims)

    def delegated_token(self, user: User, client: Client, resource: str, scopes: list[str]) -> str:
        """For ``client`` acting for ``user`` on ``resource`` (a client id), with the delegated ``scopes``."""
        return self._sign(
            {
                "aud": resource,
                "azp": client.client_id,
                "azpacr": "0" if client.public else "1",
                "scp": " ".join(scopes),
                "oid": user.oid,
                "sub": pairwise_subject(user.oid, client.client_id),
                "name": user.name,
                "preferred_username": user.username,
                **self._roles_on(user, resource),
            }
        )

    def app_token(self, client: Client, resource: str) -> str:
        """For ``client`` acting as itself on ``resource`` (client credentials): its app roles, no ``scp``."""
        principal = service_principal_id(client.client_id)
        claims: dict[str, Any] = {"aud": resource, "azp": client.client_id, "azpacr": "1"}
        claims |= {"oid": principal, "sub": principal}
        if resource == self.directory.site.client_id and client.app_roles:
            claims["roles"] = list(client.app_roles)
        return self._sign(claims)
