"""Typed settings, read from the environment once and lazily (``get_settings()``), prefixed ``WRITEBACK_``.

Connections are identity-based in Azure (endpoints plus managed identity); a storage connection string is
accepted for local runs against Azurite only, whose development key is public.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

APP_FOLDER = Path(__file__).resolve().parents[1]  # where function_app.py is: the deployment package's root


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WRITEBACK_", extra="ignore", populate_by_name=True)

    storage_connection_string: str | None = Field(
        default=None,
        validation_alias=AliasChoices("WRITEBACK_STORAGE_CONNECTION_STRING", "WRITEBACK_STORAGE"),
    )
    table_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("WRITEBACK_TABLE_ENDPOINT", "WritebackStorage__tableServiceUri")
    )
    blob_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("WRITEBACK_BLOB_ENDPOINT", "WritebackStorage__blobServiceUri")
    )
    # Storage clients: the SDK's defaults (300 s to connect, 300 s to read, 10 retries) would hold a request for
    # many minutes when storage does not answer; these keep an outage to a prompt 503 (README, "Configuration").
    storage_connect_timeout_seconds: float = Field(default=5, gt=0, le=300)
    storage_read_timeout_seconds: float = Field(default=10, gt=0, le=300)
    storage_retries: int = Field(default=2, ge=0, le=10)
    table_prefix: str = Field(default="writeback", pattern=r"^[A-Za-z][A-Za-z0-9]{0,29}$")
    payload_container: str = Field(default="writeback-payloads", pattern=r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")
    inline_payload_max_bytes: int = Field(default=30_000, ge=0, le=30_000)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    idempotency_retention_hours: int = Field(default=72, gt=0)
    # Off by default. Requests per second one caller (app + user, or app alone) may submit on average, across every
    # instance, and how many at once; more get 429 with Retry-After.
    intake_rate_per_caller: float | None = Field(default=None, gt=0)
    intake_burst_per_caller: int = Field(default=10, ge=1)
    # Request bodies, planned resources, diff values and comments are purged this long after a change ended.
    payload_retention_days: int = Field(default=30, ge=1)
    queue_name: str = "writeback-changes"
    servicebus_namespace: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "WRITEBACK_SERVICEBUS_NAMESPACE", "ServiceBusConnection__fullyQualifiedNamespace"
        ),
    )
    # A connection string for the Service Bus emulator under `func start` (local.settings.json's ServiceBusConnection,
    # which the trigger reads too); never in Azure, where the connection is identity-based (refused there).
    servicebus_connection_string: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ServiceBusConnection")
    )
    managed_identity_client_id: str | None = Field(
        default=None, validation_alias=AliasChoices("WRITEBACK_MANAGED_IDENTITY_CLIENT_ID", "AZURE_CLIENT_ID")
    )
    # Chosen together (config/targets.azure.yaml and config/policy.azure.yaml in Azure: infra/app/api.bicep); a
    # relative path is taken from the app's folder, not the working directory.
    targets_file: Path = Field(default=Path("config/targets.yaml"), validate_default=True)
    policy_file: Path = Field(default=Path("config/policy.yaml"), validate_default=True)
    auth_mode: Literal["easyauth", "jwt"] = "easyauth"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_url: str | None = None
    approval_timeout_hours: float = Field(default=72, gt=0)
    approval_reminder_hours: float | None = Field(default=None, gt=0)
    approval_webhook_url: SecretStr | None = None
    approval_signing_keys: SecretStr | None = None
    public_base_url: str | None = None
    trusted_forwarded_hosts: str | None = None  # comma-separated hosts whose X-Forwarded-Host is believed
    # Set by the platform (App Service's environment variables reference): the app runs in Azure, and whether
    # App Service Authentication is on. WRITEBACK_TRUSTED_FRONT declares another front that sets the principal.
    website_site_name: str | None = Field(default=None, validation_alias=AliasChoices("WEBSITE_SITE_NAME"))
    website_auth_enabled: bool = Field(default=False, validation_alias=AliasChoices("WEBSITE_AUTH_ENABLED"))
    trusted_front: bool = False
    sweep_after_seconds: int = Field(default=60, gt=0)
    intake_stale_after_seconds: float = Field(default=30, gt=0)
    retry_deadline_minutes: float = Field(default=60, gt=0)
    stuck_after_minutes: float = Field(default=30, gt=0)
    sweep_grace_minutes: float = Field(default=15, gt=0)
    local_runtime_url: str | None = Field(default=None, validation_alias=AliasChoices("WRITEBACK_LOCAL_RUNTIME_URL"))

    @field_validator("targets_file", "policy_file")
    @classmethod
    def _from_app_folder(cls, path: Path) -> Path:
        # Not the working directory: a placeholder worker (Flex / Linux Consumption) moves into the app's folder only
        # on specialization, and never with PYTHON_ROLLBACK_CWD_PATH (azure-functions-python-worker, dispatcher.py,
        # _change_cwd); the local runtime and tests may run from anywhere.
        return path if path.is_absolute() else APP_FOLDER / path

    @property
    def trusted_forwarded_host_set(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in (self.trusted_forwarded_hosts or "").split(",") if h.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


class TelemetrySettings(BaseSettings):
    """What telemetry needs when ``function_app.py`` is imported, before any function runs. Apart from ``Settings``
    so that a bad setting elsewhere still lets the app be indexed and report it, as before."""

    model_config = SettingsConfigDict(env_prefix="WRITEBACK_", extra="ignore", populate_by_name=True)

    # The share of changes whose trace is kept (1.0 = all); applied by the app's tracer provider, parent-based.
    trace_sampling_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    applicationinsights_connection_string: str | None = Field(
        default=None, validation_alias=AliasChoices("APPLICATIONINSIGHTS_CONNECTION_STRING")
    )
    website_site_name: str | None = Field(default=None, validation_alias=AliasChoices("WEBSITE_SITE_NAME"))
