"""The emulation's configuration: the site-wide settings from ``infra/app/easyauth.json`` (the file ``api.bicep``
loads into ``authsettingsV2``) and the local provider's registration from the environment.

Site-wide (learn.microsoft.com/azure/app-service/configure-authentication-file-based, ``globalValidation``):
``unauthenticatedClientAction`` (``Return401``, ``Return403``, ``RedirectToLoginPage`` or ``AllowAnonymous``) and
``excludedPaths``. Authentication is required (``requireAuthentication: true`` in ``api.bicep``).

Local settings (``.local/endpoints.json`` fills the first three through ``devhost.endpoints``):

| setting | what |
| --- | --- |
| ``WRITEBACK_DEV_EASYAUTH`` | ``1`` puts the emulation in front of the app |
| ``WRITEBACK_DEV_EASYAUTH_ISSUER`` | the OpenID provider's issuer (``openIdIssuer`` in Azure) |
| ``WRITEBACK_DEV_EASYAUTH_CLIENT_ID`` | the site's client id (``registration.clientId``) |
| ``WRITEBACK_DEV_EASYAUTH_CLIENT_SECRETS_FILE`` | the provider's client secrets; the site's is read from it |
| ``MICROSOFT_PROVIDER_AUTHENTICATION_SECRET`` | the site's secret itself (App Service's setting name); wins |
| ``WRITEBACK_DEV_EASYAUTH_ALLOWED_AUDIENCES`` | comma-separated; default ``<client id>,api://<client id>`` |
| ``WRITEBACK_DEV_EASYAUTH_SAMESITE`` | the session cookie's ``SameSite``: ``Lax`` (default), ``Strict`` or ``None`` |
| ``WRITEBACK_DEV_EASYAUTH_CONFIG`` | the site-wide file; default ``<app dir>/infra/app/easyauth.json`` |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENABLED_SETTING = "WRITEBACK_DEV_EASYAUTH"
ISSUER_SETTING = "WRITEBACK_DEV_EASYAUTH_ISSUER"
CLIENT_ID_SETTING = "WRITEBACK_DEV_EASYAUTH_CLIENT_ID"
SECRETS_FILE_SETTING = "WRITEBACK_DEV_EASYAUTH_CLIENT_SECRETS_FILE"
SECRET_SETTING = "MICROSOFT_PROVIDER_AUTHENTICATION_SECRET"  # noqa: S105 - the setting's name, not a secret
AUDIENCES_SETTING = "WRITEBACK_DEV_EASYAUTH_ALLOWED_AUDIENCES"
SAMESITE_SETTING = "WRITEBACK_DEV_EASYAUTH_SAMESITE"
CONFIG_SETTING = "WRITEBACK_DEV_EASYAUTH_CONFIG"
SITE_CONFIG = Path("infra") / "app" / "easyauth.json"

ACTIONS = ("Return401", "Return403", "RedirectToLoginPage", "AllowAnonymous")
SAME_SITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


class EasyAuthConfigError(ValueError):
    """The emulation cannot start: the message says which setting or field."""


@dataclass(frozen=True)
class SiteConfig:
    unauthenticated_action: str
    excluded_paths: tuple[str, ...]


@dataclass(frozen=True)
class EasyAuthSettings:
    site: SiteConfig
    issuer: str
    client_id: str
    client_secret: str
    allowed_audiences: tuple[str, ...]
    same_site: str
    key_dir: Path  # the session key shared by every instance: <state dir>/easyauth


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(ENABLED_SETTING, "").strip().lower() in ("1", "true", "yes", "on")


def load_site_config(path: Path) -> SiteConfig:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EasyAuthConfigError(f"{path}: cannot be read as JSON ({exc})") from None
    action = document.get("unauthenticatedClientAction", "RedirectToLoginPage")
    if action not in ACTIONS:
        raise EasyAuthConfigError(f"{path}: unauthenticatedClientAction must be one of {', '.join(ACTIONS)}")
    paths = document.get("excludedPaths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise EasyAuthConfigError(f"{path}: excludedPaths must be a list of paths starting with /")
    return SiteConfig(unauthenticated_action=action, excluded_paths=tuple(paths))


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise EasyAuthConfigError(
            f"{ENABLED_SETTING} is set but {name} is not: start the local services first (make services), which "
            "run the OpenID provider and write .local/endpoints.json, then start the gateway with --local-services"
        )
    return value


def _client_secret(env: Mapping[str, str], client_id: str) -> str:
    if env.get(SECRET_SETTING):
        return env[SECRET_SETTING]
    path = Path(_required(env, SECRETS_FILE_SETTING))
    try:
        secret = json.loads(path.read_text()).get(client_id)
    except (OSError, ValueError) as exc:
        raise EasyAuthConfigError(f"{SECRETS_FILE_SETTING}: {path} cannot be read ({exc})") from None
    if not isinstance(secret, str) or not secret:
        raise EasyAuthConfigError(f"{path} holds no secret for the site's client id {client_id}")
    return secret


def load_settings(app_dir: Path, state_dir: Path, environ: Mapping[str, str] | None = None) -> EasyAuthSettings:
    env = os.environ if environ is None else environ
    site = load_site_config(Path(env.get(CONFIG_SETTING) or app_dir / SITE_CONFIG))
    client_id = _required(env, CLIENT_ID_SETTING)
    audiences = [a.strip() for a in env.get(AUDIENCES_SETTING, "").split(",") if a.strip()]
    same_site = SAME_SITE.get(env.get(SAMESITE_SETTING, "lax").strip().lower())
    if same_site is None:
        raise EasyAuthConfigError(f"{SAMESITE_SETTING} must be Lax, Strict or None")
    return EasyAuthSettings(
        site=site,
        issuer=_required(env, ISSUER_SETTING).rstrip("/"),
        client_id=client_id,
        client_secret=_client_secret(env, client_id),
        allowed_audiences=tuple(audiences or (client_id, f"api://{client_id}")),
        same_site=same_site,
        key_dir=state_dir / "easyauth",
    )
