"""Target systems: the FHIR servers the gateway writes to, read from a YAML targets file.

Every target's base URL can be overridden from the environment (``WRITEBACK_TARGET_<ID>_BASE_URL``, the id upper-cased
with ``-`` as ``_``) so one file serves local runs, test slots and production. A target may leave ``base_url`` out and
take it from that setting alone (a deployment's FHIR service, whose URL no shipped file can know); until the setting
is there the target is *not configured*. ``{base_url}`` in ``auth.scope`` stands for the base URL, so a token's
audience follows it (Azure Health Data Services: the audience is the FHIR service URL,
https://learn.microsoft.com/azure/healthcare-apis/get-access-token).

A target is *not ready* when it is not configured, or when the app runs in Azure and its base URL is on a loopback
address (nothing of ours listens there): readiness reports it, intake refuses it, and the pipeline fails its changes
rather than retrying them. A bearer token never goes over plain ``http://`` to a host that is not loopback: such a
target fails validation.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.core.errors import ConfigurationError

Interaction = Literal["read", "vread", "search", "create", "update", "patch", "transaction"]
ALL_INTERACTIONS: tuple[Interaction, ...] = ("read", "vread", "search", "create", "update", "patch", "transaction")
BASE_URL_PLACEHOLDER = "{base_url}"


def is_loopback_host(host: str | None) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (also as an IPv4-mapped IPv6 address); a name other than localhost is not."""
    if not host:
        return False
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def in_clear_off_loopback(url: str) -> bool:
    """True when ``url`` is plain ``http://`` to a host that is not loopback: no credential may go there."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname)


class AuthKind(StrEnum):
    NONE = "none"
    MANAGED_IDENTITY = "managed_identity"
    SMART_BACKEND_SERVICES = "smart_backend_services"


class TargetAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: AuthKind = AuthKind.NONE
    scope: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    key_name: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> TargetAuth:
        if self.type is AuthKind.MANAGED_IDENTITY and not self.scope:
            raise ValueError("managed_identity auth needs 'scope'")
        if self.type is AuthKind.SMART_BACKEND_SERVICES and not (self.token_url and self.client_id and self.key_name):
            raise ValueError("smart_backend_services auth needs 'token_url', 'client_id' and 'key_name'")
        if self.type is AuthKind.SMART_BACKEND_SERVICES and self.token_url and in_clear_off_loopback(self.token_url):
            raise ValueError(
                f"token_url is plain http to {urlsplit(self.token_url).hostname!r}, which is not a loopback host: "
                "the signed client assertion would travel in clear; use https"
            )
        return self


class TargetCapabilities(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_types: list[str] = Field(default_factory=list)
    interactions: list[Interaction] = Field(default_factory=lambda: list(ALL_INTERACTIONS))
    if_match: bool = True
    conditional_create: bool = True
    transactions: bool = True
    vread: bool = True
    return_representation: bool = True


class TargetEntry(BaseModel):
    """A target as its file gives it, base URL aside: what intake checks a request against."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
    auth: TargetAuth = Field(default_factory=TargetAuth)
    capabilities: TargetCapabilities = Field(default_factory=TargetCapabilities)
    provenance: Literal["transaction", "after", "header", "none"] = "after"
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)


class TargetConfig(TargetEntry):
    """A target with its base URL: one the gateway can call."""

    base_url: str

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _token_only_where_safe(self) -> TargetConfig:
        if self.auth.type is not AuthKind.NONE and in_clear_off_loopback(self.base_url):
            raise ValueError(
                f"base_url is plain http to {urlsplit(self.base_url).hostname!r}, which is not a loopback host: "
                f"the {self.auth.type.value} bearer token would travel in clear; use https (or auth type none)"
            )
        if self.auth.scope and BASE_URL_PLACEHOLDER in self.auth.scope:
            self.auth = self.auth.model_copy(
                update={"scope": self.auth.scope.replace(BASE_URL_PLACEHOLDER, self.base_url)}
            )
        return self


@dataclass(frozen=True, slots=True)
class TargetProblem:
    """Why a known target cannot be written to here: ``not-configured`` or ``loopback-in-azure``."""

    code: Literal["not-configured", "loopback-in-azure"]
    detail: str


def env_override_name(target_id: str) -> str:
    return "WRITEBACK_TARGET_" + re.sub(r"[^A-Za-z0-9]", "_", target_id).upper() + "_BASE_URL"


class TargetRegistry:
    """The configured targets, by id; ``in_azure`` (``WEBSITE_SITE_NAME`` set) makes a loopback base URL not ready."""

    def __init__(
        self, targets: Sequence[TargetConfig], *, unconfigured: Sequence[TargetEntry] = (), in_azure: bool = False
    ) -> None:
        self._targets = {t.id: t for t in targets}
        self._unconfigured = {t.id: t for t in unconfigured}
        self.in_azure = in_azure

    def get(self, target_id: str) -> TargetConfig | None:
        """The target with its base URL; None when unknown or not configured."""
        return self._targets.get(target_id)

    def entry(self, target_id: str) -> TargetEntry | None:
        """What the file says of a known target, configured or not."""
        return self._targets.get(target_id) or self._unconfigured.get(target_id)

    def ids(self) -> list[str]:
        return sorted(self._targets.keys() | self._unconfigured.keys())

    def problem(self, target_id: str) -> TargetProblem | None:
        """Why a known target is not ready (None when it is, or when the id is unknown)."""
        if target_id in self._unconfigured:
            return TargetProblem(
                "not-configured",
                f"target {target_id!r} has no base URL: its targets file leaves base_url to the setting "
                f"{env_override_name(target_id)}, which is not set",
            )
        target = self._targets.get(target_id)
        if target is not None and self.in_azure:
            host = urlsplit(target.base_url).hostname
            if is_loopback_host(host):
                return TargetProblem(
                    "loopback-in-azure",
                    f"target {target_id!r} has its base URL on the loopback host {host!r}, and the app runs in Azure "
                    f"(WEBSITE_SITE_NAME is set), where nothing of the gateway's listens there; set "
                    f"{env_override_name(target_id)} or choose the deployed targets file",
                )
        return None

    @classmethod
    def from_file(cls, path: Path, environ: dict[str, str] | None = None, *, in_azure: bool = False) -> TargetRegistry:
        env = os.environ if environ is None else environ
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"targets file {path}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("targets"), dict):
            raise ConfigurationError(f"targets file {path}: expected a mapping with a 'targets' mapping")
        targets: list[TargetConfig] = []
        unconfigured: list[TargetEntry] = []
        for target_id, body in raw["targets"].items():
            if body is not None and not isinstance(body, dict):
                raise ConfigurationError(f"targets file {path}: targets.{target_id}: must be a mapping")
            fields: dict[str, Any] = {"id": target_id, **(body or {})}
            setting = env_override_name(str(target_id))
            override = env.get(setting)
            if override:
                fields["base_url"] = override
            if fields.get("base_url") is None:
                fields.pop("base_url", None)
            try:
                if "base_url" in fields:
                    targets.append(TargetConfig.model_validate(fields))
                else:
                    unconfigured.append(TargetEntry.model_validate(fields))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in (f"targets.{target_id}", *first["loc"]))
                message = str(first["msg"]).removeprefix("Value error, ")
                source = f" (base_url from {setting})" if override else ""
                raise ConfigurationError(f"targets file {path}: {where}: {message}{source}") from exc
        return cls(targets, unconfigured=unconfigured, in_azure=in_azure)
