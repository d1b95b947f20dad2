"""The composition root: the one place that builds the gateway's services from settings.

``build(settings, **overrides)`` returns a ``Gateway``: every part (adapter or service) is a property built on first
use and kept, so building does no I/O, and a part that a trigger never touches is never built. Overrides replace
any part by name (``build(settings, change_store=FakeChangeStore(), fhir=lambda target: fake)``); the parts built
from them follow. The app's triggers share one ``Gateway`` per process (``gateway()``); ``reset()`` forgets it and
the settings. The model is cosmicpython's ``bootstrap`` (Architecture Patterns with Python, chapter 13).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared.adapters.approval_webhook import WebhookNotifier
from shared.adapters.blob_payload_store import BlobPayloadStore
from shared.adapters.fhir_guard import (
    MAX_WAIT,
    CircuitBreaker,
    GuardedFhirClient,
    LocalGuard,
    TargetGuard,
    TokenBucket,
)
from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import token_provider_for
from shared.adapters.local_queue_publisher import LocalQueuePublisher
from shared.adapters.servicebus_publisher import ServiceBusPublisher
from shared.adapters.storage_transport import blob_client_options, table_client_options
from shared.adapters.table_approval_nonce_store import TableApprovalNonceStore
from shared.adapters.table_change_store import TableChangeStore
from shared.adapters.table_idempotency_store import TableIdempotencyStore
from shared.adapters.table_intake_limiter import TableIntakeLimiter
from shared.adapters.table_retention_state import TableRetentionState
from shared.adapters.table_sweep_state import TableSweepState
from shared.adapters.table_target_guard import GuardTable, TableTargetGuard
from shared.api.access import Access
from shared.api.approvals_api import ApprovalsApi
from shared.api.caller_identity import Authenticator, JwtValidator
from shared.api.changes_api import ChangesApi
from shared.api.health import policy_readiness, targets_readiness
from shared.api.operations_api import OperationsApi
from shared.app.approval_links import ApprovalLinkSigner, parse_signing_keys
from shared.app.approval_notices import ApprovalNotices
from shared.app.approvals import ApprovalLinks, ApprovalService
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal, utcnow
from shared.app.maintenance import OutboxSweeper
from shared.app.operations import OperationsService
from shared.app.pipeline import ChangePipeline
from shared.app.retention import PayloadPurger
from shared.config import Settings, TelemetrySettings, get_settings
from shared.core.errors import ConfigurationError
from shared.core.policy import Policy
from shared.core.ports import (
    ApprovalNonceStore,
    ApprovalNotifier,
    ChangeStore,
    FhirClient,
    IdempotencyStore,
    IntakeLimiter,
    MessagePublisher,
    PayloadStore,
    RetentionState,
    SweepState,
)
from shared.core.rate_limits import Gcra
from shared.core.targets import TargetConfig, TargetRegistry
from shared.core.telemetry import SERVICE_NAME
from shared.core.telemetry_pipeline import (
    Exporters,
    TelemetryPipeline,
    build_pipeline,
    install_pipeline,
    installed_pipeline,
)

FhirClients = Callable[[TargetConfig], FhirClient]

log = logging.getLogger("writeback.startup")


TargetGuards = Callable[[TargetConfig], TargetGuard]


def local_guard(target: TargetConfig) -> TargetGuard:
    """A guard in this process only (one instance, tests, benchmarks)."""
    limiter = TokenBucket(target.rate_limit_per_second) if target.rate_limit_per_second else None
    return LocalGuard(limiter, CircuitBreaker())


class GuardedFhirClients:
    """One guarded HTTP client per target, made on first use."""

    def __init__(self, managed_identity_client_id: str | None, guards: TargetGuards = local_guard) -> None:
        self._managed_identity_client_id = managed_identity_client_id
        self._guards = guards
        self._clients: dict[str, FhirClient] = {}
        self._lock = threading.Lock()

    def __call__(self, target: TargetConfig) -> FhirClient:
        with self._lock:
            client = self._clients.get(target.id)
            if client is None:
                tokens = token_provider_for(target, managed_identity_client_id=self._managed_identity_client_id)
                guard = self._guards(target)
                http = HttpFhirClient(target, tokens=tokens, before_send=lambda: guard.admit(MAX_WAIT))
                client = self._clients[target.id] = GuardedFhirClient(http, guard, admit=False)
            return client


class Gateway:
    """The gateway's parts, each built on first use from the settings and the overrides."""

    def __init__(self, settings: Settings, overrides: Mapping[str, Any]) -> None:
        unknown = sorted(name for name in overrides if not isinstance(getattr(type(self), name, None), cached_property))
        if unknown:
            raise TypeError(f"build() got overrides for parts that do not exist: {', '.join(unknown)}")
        self.settings = settings
        # cached_property keeps what it built in the instance's __dict__: an override is a part built already.
        self.__dict__.update(overrides)

    # --- clock and credentials -------------------------------------------------------------------------------

    @cached_property
    def clock(self) -> Callable[[], datetime]:
        return utcnow

    @cached_property
    def credential(self) -> Any:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

        if self.settings.managed_identity_client_id:
            return ManagedIdentityCredential(client_id=self.settings.managed_identity_client_id)
        return DefaultAzureCredential(exclude_interactive_browser_credential=True)

    # --- storage ------------------------------------------------------------------------------------------------

    @property
    def _storage_limits(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "connect_timeout": settings.storage_connect_timeout_seconds,
            "read_timeout": settings.storage_read_timeout_seconds,
            "retries": settings.storage_retries,
        }

    @cached_property
    def table_service(self) -> TableServiceClient:
        settings = self.settings
        options = table_client_options(**self._storage_limits)
        if settings.storage_connection_string:
            return TableServiceClient.from_connection_string(settings.storage_connection_string, **options)
        if settings.table_endpoint:
            return TableServiceClient(settings.table_endpoint, credential=self.credential, **options)
        raise ConfigurationError("set WritebackStorage__tableServiceUri (or a storage connection string locally)")

    @cached_property
    def blob_service(self) -> BlobServiceClient:
        settings = self.settings
        options = blob_client_options(**self._storage_limits)
        if settings.storage_connection_string:
            return BlobServiceClient.from_connection_string(settings.storage_connection_string, **options)
        if settings.blob_endpoint:
            return BlobServiceClient(settings.blob_endpoint, credential=self.credential, **options)
        raise ConfigurationError("set WritebackStorage__blobServiceUri (or a storage connection string locally)")

    @cached_property
    def change_store(self) -> ChangeStore:
        return TableChangeStore(self.table_service, prefix=self.settings.table_prefix)

    @cached_property
    def sweep_state(self) -> SweepState:
        return TableSweepState(self.table_service, prefix=self.settings.table_prefix)

    @cached_property
    def retention_state(self) -> RetentionState:
        state = TableRetentionState(self.table_service, prefix=self.settings.table_prefix)
        state.ensure_tables()
        return state

    @cached_property
    def idempotency_store(self) -> IdempotencyStore:
        return TableIdempotencyStore(self.table_service, prefix=self.settings.table_prefix)

    @cached_property
    def approval_nonces(self) -> ApprovalNonceStore:
        return TableApprovalNonceStore(self.table_service, prefix=self.settings.table_prefix)

    @cached_property
    def payload_store(self) -> PayloadStore:
        settings = self.settings
        return BlobPayloadStore(
            self.blob_service, settings.payload_container, inline_max_bytes=settings.inline_payload_max_bytes
        )

    # --- configuration ----------------------------------------------------------------------------------------

    @cached_property
    def targets(self) -> TargetRegistry:
        in_azure = self.settings.website_site_name is not None
        return TargetRegistry.from_file(self.settings.targets_file, in_azure=in_azure)

    @cached_property
    def policy(self) -> Policy:
        """The policy, checked against the targets: the two files must agree (each names what the other defines)."""
        loaded = Policy.from_file(self.settings.policy_file)
        loaded.check_targets(self.targets.ids(), targets_file=str(self.settings.targets_file))
        return loaded

    def check_configuration(self) -> None:
        """Load the targets and the policy and check them against each other; ``ConfigurationError`` names the
        file, the source and the target of a mismatch. Reads two local files; touches no service."""
        self.targets  # noqa: B018 - building it is the check
        self.policy  # noqa: B018

    # --- downstream ---------------------------------------------------------------------------------------------

    @cached_property
    def publisher(self) -> MessagePublisher:
        settings = self.settings
        if settings.local_runtime_url:
            return LocalQueuePublisher(settings.local_runtime_url, settings.queue_name)
        if settings.servicebus_connection_string is not None and not settings.servicebus_namespace:
            if settings.website_site_name is not None:
                raise ConfigurationError(
                    "ServiceBusConnection holds a connection string: in Azure the connection is identity-based "
                    "(set ServiceBusConnection__fullyQualifiedNamespace instead)"
                )
            # The Service Bus emulator (func start): the trigger reads the same setting.
            return ServiceBusPublisher(
                settings.queue_name, connection_string=settings.servicebus_connection_string.get_secret_value()
            )
        if not settings.servicebus_namespace:
            raise ConfigurationError("set ServiceBusConnection__fullyQualifiedNamespace")
        return ServiceBusPublisher(
            settings.queue_name, fully_qualified_namespace=settings.servicebus_namespace, credential=self.credential
        )

    @cached_property
    def target_guards(self) -> TargetGuards:
        """Each target's rate limit and circuit breaker, held in Table Storage for every instance together."""
        table = GuardTable(self.table_service, prefix=self.settings.table_prefix)
        return lambda target: TableTargetGuard(table, target.id, rate=target.rate_limit_per_second)

    @cached_property
    def fhir(self) -> FhirClients:
        return GuardedFhirClients(self.settings.managed_identity_client_id, self.target_guards)

    @cached_property
    def approval_signer(self) -> ApprovalLinkSigner:
        if self.settings.approval_signing_keys is None:
            raise ConfigurationError("approval links need WRITEBACK_APPROVAL_SIGNING_KEYS")
        return ApprovalLinkSigner(parse_signing_keys(self.settings.approval_signing_keys.get_secret_value()))

    @cached_property
    def approval_notifier(self) -> ApprovalNotifier:
        if self.settings.approval_webhook_url is None:
            raise ConfigurationError("approval notifications need WRITEBACK_APPROVAL_WEBHOOK_URL")
        return WebhookNotifier(self.settings.approval_webhook_url.get_secret_value())

    # --- use cases ----------------------------------------------------------------------------------------------

    @cached_property
    def journal(self) -> ChangeJournal:
        return ChangeJournal(self.change_store, clock=self.clock)

    @cached_property
    def intake_limiter(self) -> IntakeLimiter | None:
        settings = self.settings
        if settings.intake_rate_per_caller is None:
            return None
        limit = Gcra(settings.intake_rate_per_caller, settings.intake_burst_per_caller)
        limiter = TableIntakeLimiter(self.table_service, limit, prefix=settings.table_prefix)
        limiter.ensure_tables()
        return limiter

    @cached_property
    def intake(self) -> IntakeService:
        settings = self.settings
        return IntakeService(
            idempotency=self.idempotency_store,
            journal=self.journal,
            payloads=self.payload_store,
            publisher=self.publisher,
            targets=self.targets,
            max_body_bytes=settings.max_body_bytes,
            retention=timedelta(hours=settings.idempotency_retention_hours),
            stale_after=timedelta(seconds=settings.intake_stale_after_seconds),
            sweep_state=self.sweep_state,
            sweep_grace=timedelta(minutes=settings.sweep_grace_minutes),
            clock=self.clock,
        )

    @cached_property
    def sweeper(self) -> OutboxSweeper:
        settings = self.settings
        return OutboxSweeper(
            self.intake,
            self.sweep_state,
            publish_after=timedelta(seconds=settings.sweep_after_seconds),
            stuck_after=timedelta(minutes=settings.stuck_after_minutes),
            grace=timedelta(minutes=settings.sweep_grace_minutes),
        )

    @cached_property
    def payload_purger(self) -> PayloadPurger:
        return PayloadPurger(
            self.journal,
            self.payload_store,
            self.retention_state,
            retention=timedelta(days=self.settings.payload_retention_days),
            clock=self.clock,
        )

    @cached_property
    def pipeline(self) -> ChangePipeline:
        settings = self.settings
        return ChangePipeline(
            journal=self.journal,
            payloads=self.payload_store,
            targets=self.targets,
            policy=self.policy,
            fhir=self.fhir,
            approval_timeout=timedelta(hours=settings.approval_timeout_hours),
            approval_reminder=timedelta(hours=settings.approval_reminder_hours)
            if settings.approval_reminder_hours
            else None,
            notify_approvers=settings.approval_webhook_url is not None,
            clock=self.clock,
        )

    @cached_property
    def approvals(self) -> ApprovalService:
        return ApprovalService(self.journal, sweep_state=self.sweep_state, clock=self.clock)

    @cached_property
    def approval_links(self) -> ApprovalLinks | None:
        """The signed-callback path; None when no signing keys are configured (the callback answers 404)."""
        if self.settings.approval_signing_keys is None:
            return None
        return ApprovalLinks(signer=self.approval_signer, nonces=self.approval_nonces)

    @cached_property
    def approval_notices(self) -> ApprovalNotices:
        base_url = self.settings.public_base_url or self.settings.local_runtime_url
        if not base_url:
            raise ConfigurationError("approval notifications need WRITEBACK_PUBLIC_BASE_URL (the gateway's public URL)")
        return ApprovalNotices(self.journal, self.approval_notifier, self.approval_signer, base_url)

    @cached_property
    def operations(self) -> OperationsService:
        return OperationsService(
            self.journal,
            self.publisher,
            self.sweep_state,
            stuck_after=timedelta(minutes=self.settings.stuck_after_minutes),
            clock=self.clock,
        )

    # --- the HTTP face ------------------------------------------------------------------------------------------

    @cached_property
    def authenticator(self) -> Authenticator:
        settings = self.settings
        if settings.auth_mode == "jwt":
            if not (settings.jwt_issuer and settings.jwt_audience and settings.jwt_jwks_url):
                raise ConfigurationError(
                    "jwt auth needs WRITEBACK_JWT_ISSUER, WRITEBACK_JWT_AUDIENCE, WRITEBACK_JWT_JWKS_URL"
                )
            validator = JwtValidator(
                issuer=settings.jwt_issuer.split(","),
                audience=settings.jwt_audience.split(","),
                jwks_url=settings.jwt_jwks_url,
            )
            return Authenticator("jwt", jwt=validator)
        in_azure = settings.website_site_name is not None
        return Authenticator(
            "easyauth", front_verified=not in_azure or settings.website_auth_enabled or settings.trusted_front
        )

    @cached_property
    def access(self) -> Access:
        return Access(self.authenticator, self.journal, self.policy)

    @cached_property
    def changes_api(self) -> ChangesApi:
        return ChangesApi(
            self.access,
            self.intake,
            self.journal,
            known_targets=self.targets.ids(),
            limiter=self.intake_limiter,
        )

    @cached_property
    def approvals_api(self) -> ApprovalsApi:
        return ApprovalsApi(self.access, self.approvals, self.approval_links)

    @cached_property
    def operations_api(self) -> OperationsApi:
        return OperationsApi(self.access, self.operations)

    def _blob_storage_ready(self) -> None:
        store = self.payload_store
        if isinstance(store, BlobPayloadStore):
            store.ensure_container()

    @cached_property
    def health_probes(self) -> dict[str, Callable[[], Any]]:
        """What readiness checks: configuration (each target ready, the policy agreeing with the targets), and that
        Table and Blob storage answer."""
        return {
            "targets": lambda: targets_readiness(self.targets),
            "policy": lambda: policy_readiness(self.policy),
            "tableStorage": lambda: next(iter(self.table_service.list_tables(results_per_page=1)), None),
            "blobStorage": self._blob_storage_ready,
        }


def build(settings: Settings | None = None, **overrides: Any) -> Gateway:
    """The gateway's parts for ``settings`` (the environment's when None), with ``overrides`` in place; no I/O."""
    return Gateway(settings if settings is not None else get_settings(), overrides)


_gateway: Gateway | None = None
_gateway_lock = threading.Lock()


def gateway() -> Gateway:
    """This process's gateway, built from the environment's settings on first use, when the targets and the policy
    are checked against each other: a mismatch is logged at once (whichever trigger came first), and every part that
    needs the policy, readiness included, refuses with the same message."""
    global _gateway
    with _gateway_lock:
        if _gateway is None:
            _gateway = build(get_settings())
            try:
                _gateway.check_configuration()
            except ConfigurationError as exc:
                log.error("configuration refused: %s", exc)
        return _gateway


def reset() -> None:
    """Forget this process's gateway and the settings (tests change the environment between cases)."""
    global _gateway
    with _gateway_lock:
        get_settings.cache_clear()
        _gateway = None


def configure_telemetry(exporters: Exporters | None = None) -> TelemetryPipeline:
    """Install this process's telemetry pipeline, once (``function_app.py`` calls it on import).

    Azure Monitor's exporters when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set, none otherwise (spans and
    metrics are still produced, for tests to export where they choose: ``exporters``); sampling by
    ``WRITEBACK_TRACE_SAMPLING_RATIO``. The service name is the site's (``WEBSITE_SITE_NAME``) in Azure, so the
    app's spans share the Functions host's cloud role in Application Insights.
    """
    installed = installed_pipeline()
    if installed is not None:
        return installed
    settings = TelemetrySettings()
    if exporters is None and settings.applicationinsights_connection_string:
        # Imported here: the exporters load a good part of the Azure Monitor SDK, which local runs do not need.
        from shared.adapters.azure_monitor_export import azure_monitor_exporters, trace_azure_sdk_calls

        exporters = azure_monitor_exporters(settings.applicationinsights_connection_string)
        trace_azure_sdk_calls()
    pipeline = build_pipeline(
        exporters or Exporters(),
        sampling_ratio=settings.trace_sampling_ratio,
        service_name=settings.website_site_name or SERVICE_NAME,
    )
    return install_pipeline(pipeline)
