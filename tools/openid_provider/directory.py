"""The local OpenID provider's directory: its tenant, the gateway's app registration (the site), the client apps and
the demo people, read from ``config/demo-users.yaml``; client secrets kept in the state folder.

Secrets are generated at the first start (``secrets.token_urlsafe``) into ``client-secrets.json`` (mode 0600) and
kept across restarts, so a gateway started earlier keeps redeeming codes after the provider restarts.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_DIRECTORY = Path(__file__).resolve().parents[2] / "config" / "demo-users.yaml"
SECRETS_FILE = "client-secrets.json"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


class DirectoryError(ValueError):
    """The directory file is not valid; the message names the field."""


@dataclass(frozen=True)
class User:
    oid: str
    name: str
    username: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Client:
    """An app registration that gets tokens: the site itself or an app calling it."""

    client_id: str
    display_name: str
    app_roles: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    public: bool = False

    def redirect_allowed(self, uri: str) -> bool:
        """Whether ``uri`` is registered: exactly, except that a loopback URI matches on any port (Entra ignores the
        port of localhost redirect URIs; RFC 8252 section 7.3)."""
        return any(_same_redirect(uri, registered) for registered in self.redirect_uris)

    def origin_allowed(self, uri: str) -> bool:
        """Whether ``uri`` is on the scheme and host of a registered redirect URI (any port for loopback)."""
        return any(_same_origin(uri, registered) for registered in self.redirect_uris)


@dataclass(frozen=True)
class Site(Client):
    scopes: tuple[str, ...] = ()

    @property
    def resource_ids(self) -> tuple[str, str]:
        """The two names a scope may give the site by: its client id and its application id URI."""
        return self.client_id, f"api://{self.client_id}"


@dataclass(frozen=True)
class Directory:
    tenant_id: str
    site: Site
    clients: Mapping[str, Client]
    users: Mapping[str, User]
    secrets: Mapping[str, str]

    def client(self, client_id: str) -> Client | None:
        return self.site if client_id == self.site.client_id else self.clients.get(client_id)


def _split(uri: str) -> tuple[str, str, int | None, str, str] | None:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        return None
    return parts.scheme, parts.hostname.lower(), port, parts.path or "/", parts.query


def _same_origin(uri: str, registered: str) -> bool:
    given, known = _split(uri), _split(registered)
    if given is None or known is None or given[:2] != known[:2]:
        return False
    return given[1] in LOOPBACK_HOSTS or given[2] == known[2]


def _same_redirect(uri: str, registered: str) -> bool:
    given, known = _split(uri), _split(registered)
    return given is not None and known is not None and _same_origin(uri, registered) and given[3:] == known[3:]


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DirectoryError(f"{where}: must be a list of non-empty strings")
    return tuple(value)


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DirectoryError(f"{where}.{key}: required, a non-empty string")
    return value


def _client(client_id: str, entry: Any, where: str) -> Client:
    if not isinstance(entry, dict):
        raise DirectoryError(f"{where}: must be a mapping")
    public = entry.get("public", False)
    if not isinstance(public, bool):
        raise DirectoryError(f"{where}.public: must be true or false")
    redirect_uris = _strings(entry.get("redirect_uris"), f"{where}.redirect_uris")
    for uri in redirect_uris:
        if _split(uri) is None:
            raise DirectoryError(f"{where}.redirect_uris: {uri!r} is not an absolute http(s) URL without a fragment")
    return Client(
        client_id=client_id,
        display_name=str(entry.get("display_name") or client_id),
        app_roles=_strings(entry.get("app_roles"), f"{where}.app_roles"),
        redirect_uris=redirect_uris,
        public=public,
    )


def load_or_create_secrets(path: Path, client_ids: list[str]) -> dict[str, str]:
    """The secret of each confidential client, from ``path``; missing ones are generated and the file rewritten
    (atomically, mode 0600)."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = {cid: known.get(cid) or secrets.token_urlsafe(32) for cid in client_ids}
    if wanted != known:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(wanted, out, indent=2)
        os.replace(temporary, path)
    return wanted


def load_directory(path: Path, secrets_file: Path) -> Directory:
    """Read and check the directory file; confidential clients get their secrets from ``secrets_file``."""
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise DirectoryError(f"{path}: expected a mapping")
    tenant_id = _text(document, "tenant_id", "directory")
    site_entry = document.get("site")
    if not isinstance(site_entry, dict):
        raise DirectoryError("site: required, a mapping")
    base = _client(_text(site_entry, "client_id", "site"), site_entry, "site")
    site = Site(**{**base.__dict__, "public": False}, scopes=_strings(site_entry.get("scopes"), "site.scopes"))
    clients_entry = document.get("clients") or {}
    if not isinstance(clients_entry, dict):
        raise DirectoryError("clients: must be a mapping of client id to client")
    clients = {str(cid): _client(str(cid), entry, f"clients.{cid}") for cid, entry in clients_entry.items()}
    if site.client_id in clients:
        raise DirectoryError(f"clients.{site.client_id}: the site's client id cannot also be a client")
    users: dict[str, User] = {}
    for i, entry in enumerate(document.get("users") or []):
        where = f"users[{i}]"
        if not isinstance(entry, dict):
            raise DirectoryError(f"{where}: must be a mapping")
        user = User(
            oid=_text(entry, "oid", where),
            name=_text(entry, "name", where),
            username=_text(entry, "username", where),
            roles=_strings(entry.get("roles"), f"{where}.roles"),
        )
        if user.oid in users:
            raise DirectoryError(f"{where}.oid: {user.oid} is listed twice")
        users[user.oid] = user
    confidential = [site.client_id, *(c.client_id for c in clients.values() if not c.public)]
    return Directory(tenant_id, site, clients, users, load_or_create_secrets(secrets_file, confidential))
