"""Target systems: the FHIR servers the gateway writes to, read from a YAML targets file.

Every target's base URL can be overridden from the environment (``WRITEBACK_TARGET_<ID>_BASE_URL``, the id upper-cased
with ``-`` as ``_``) so one file serves local runs, test slots and production.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.core.errors import ConfigurationError

Interaction = Literal["read", "vread", "search", "create", "update", "patch", "transaction"]
ALL_INTERACTIONS: tuple[Interaction, ...] = ("read", "vread", "search", "create", "update", "patch", "transaction")


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


class TargetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
    base_url: str
    auth: TargetAuth = Field(default_factory=TargetAuth)
    capabilities: TargetCapabilities = Field(default_factory=TargetCapabilities)
    provenance: Literal["transaction", "after", "header", "none"] = "after"
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")


def env_override_name(target_id: str) -> str:
    return "WRITEBACK_TARGET_" + re.sub(r"[^A-Za-z0-9]", "_", target_id).upper() + "_BASE_URL"


class TargetRegistry:
    """The configured targets, by id."""

    def __init__(self, targets: list[TargetConfig]) -> None:
        self._targets = {t.id: t for t in targets}

    def get(self, target_id: str) -> TargetConfig | None:
        return self._targets.get(target_id)

    def ids(self) -> list[str]:
        return sorted(self._targets)

    @classmethod
    def from_file(cls, path: Path, environ: dict[str, str] | None = None) -> TargetRegistry:
        env = os.environ if environ is None else environ
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"targets file {path}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("targets"), dict):
            raise ConfigurationError(f"targets file {path}: expected a mapping with a 'targets' mapping")
        targets: list[TargetConfig] = []
        for target_id, body in raw["targets"].items():
            body = dict(body or {})
            override = env.get(env_override_name(str(target_id)))
            if override:
                body["base_url"] = override
            try:
                targets.append(TargetConfig.model_validate({"id": target_id, **body}))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in (f"targets.{target_id}", *first["loc"]))
                raise ConfigurationError(f"targets file {path}: {where}: {first['msg']}") from exc
        return cls(targets)
