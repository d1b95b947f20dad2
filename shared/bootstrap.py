"""The composition root: builds the real adapters from settings, lazily and once per process.

Triggers and activities ask here for a port; tests build fakes or adapters directly instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Any

from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared.adapters.blob_payload_store import BlobPayloadStore
from shared.adapters.fhir_guard import CircuitBreaker, GuardedFhirClient, TokenBucket
from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import token_provider_for
from shared.adapters.local_queue_publisher import LocalQueuePublisher
from shared.adapters.servicebus_publisher import ServiceBusPublisher
from shared.adapters.storage_transport import EnvironmentOnceTransport
from shared.adapters.table_change_store import TableChangeStore
from shared.adapters.table_idempotency_store import TableIdempotencyStore
from shared.adapters.table_sweep_state import TableSweepState
from shared.api.caller_identity import Authenticator, JwtValidator
from shared.api.changes_api import ChangesApi
from shared.app.approval_notices import ApprovalNotices
from shared.app.approvals import ApprovalLinks, ApprovalService
from shared.app.intake import IntakeService
from shared.app.journal import ChangeJournal
from shared.app.maintenance import OutboxSweeper
from shared.app.operations import OperationsService
from shared.app.pipeline import ChangePipeline
from shared.config import Settings, get_settings
from shared.core.errors import ConfigurationError
from shared.core.policy import Policy
from shared.core.ports import FhirClient, MessagePublisher
from shared.core.targets import TargetConfig, TargetRegistry

_lock = threading.RLock()


def _credential(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if settings.managed_identity_client_id:
        return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


@cache
def table_service() -> TableServiceClient:
    settings = get_settings()
    if settings.storage_connection_string:
        return TableServiceClient.from_connection_string(
            settings.storage_connection_string, transport=EnvironmentOnceTransport()
        )
    if settings.table_endpoint:
        return TableServiceClient(
            settings.table_endpoint, credential=_credential(settings), transport=EnvironmentOnceTransport()
        )
    raise ConfigurationError("set WritebackStorage__tableServiceUri (or a storage connection string locally)")


@cache
def blob_service() -> BlobServiceClient:
    settings = get_settings()
    if settings.storage_connection_string:
        return BlobServiceClient.from_connection_string(
            settings.storage_connection_string, transport=EnvironmentOnceTransport()
        )
    if settings.blob_endpoint:
        return BlobServiceClient(
            settings.blob_endpoint, credential=_credential(settings), transport=EnvironmentOnceTransport()
        )
    raise ConfigurationError("set WritebackStorage__blobServiceUri (or a storage connection string locally)")


@cache
def change_store() -> TableChangeStore:
    with _lock:
        store = TableChangeStore(table_service(), prefix=get_settings().table_prefix)
        store.ensure_tables()
        return store


@cache
def sweep_state() -> TableSweepState:
    with _lock:
        state = TableSweepState(table_service(), prefix=get_settings().table_prefix)
        state.ensure_tables()
        return state


@cache
def idempotency_store() -> TableIdempotencyStore:
    with _lock:
        store = TableIdempotencyStore(table_service(), prefix=get_settings().table_prefix)
        store.ensure_tables()
        return store


@cache
def payload_store() -> BlobPayloadStore:
    settings = get_settings()
    with _lock:
        store = BlobPayloadStore(
            blob_service(), settings.payload_container, inline_max_bytes=settings.inline_payload_max_bytes
        )
        store.ensure_container()
        return store


@cache
def targets() -> TargetRegistry:
    return TargetRegistry.from_file(get_settings().targets_file)


@cache
def policy() -> Policy:
    loaded = Policy.from_file(get_settings().policy_file)
    loaded.check_targets(targets().ids())
    return loaded


@cache
def journal() -> ChangeJournal:
    return ChangeJournal(change_store())


@cache
def publisher() -> MessagePublisher:
    settings = get_settings()
    if settings.local_runtime_url:
        return LocalQueuePublisher(settings.local_runtime_url, settings.queue_name)
    if not settings.servicebus_namespace:
        raise ConfigurationError("set ServiceBusConnection__fullyQualifiedNamespace")
    return ServiceBusPublisher(
        settings.queue_name, fully_qualified_namespace=settings.servicebus_namespace, credential=_credential(settings)
    )


_clients: dict[str, FhirClient] = {}


def fhir_client(target: TargetConfig) -> FhirClient:
    with _lock:
        client = _clients.get(target.id)
        if client is None:
            tokens = token_provider_for(target, managed_identity_client_id=get_settings().managed_identity_client_id)
            limiter = TokenBucket(target.rate_limit_per_second) if target.rate_limit_per_second else None
            client = _clients[target.id] = GuardedFhirClient(
                HttpFhirClient(target, tokens=tokens), limiter=limiter, breaker=CircuitBreaker()
            )
        return client


@cache
def intake() -> IntakeService:
    settings = get_settings()
    return IntakeService(
        idempotency=idempotency_store(),
        journal=journal(),
        payloads=payload_store(),
        publisher=publisher(),
        targets=targets(),
        max_body_bytes=settings.max_body_bytes,
        retention=timedelta(hours=settings.idempotency_retention_hours),
        stale_after=timedelta(seconds=settings.intake_stale_after_seconds),
        sweep_state=sweep_state(),
        sweep_grace=timedelta(minutes=settings.sweep_grace_minutes),
    )


@cache
def sweeper() -> OutboxSweeper:
    settings = get_settings()
    return OutboxSweeper(
        intake(),
        sweep_state(),
        publish_after=timedelta(seconds=settings.sweep_after_seconds),
        stuck_after=timedelta(minutes=settings.stuck_after_minutes),
        grace=timedelta(minutes=settings.sweep_grace_minutes),
    )


@cache
def pipeline() -> ChangePipeline:
    settings = get_settings()
    return ChangePipeline(
        journal=journal(),
        payloads=payload_store(),
        targets=targets(),
        policy=policy(),
        fhir=fhir_client,
        approval_timeout=timedelta(hours=settings.approval_timeout_hours),
        approval_reminder=timedelta(hours=settings.approval_reminder_hours)
        if settings.approval_reminder_hours
        else None,
        notify_approvers=settings.approval_webhook_url is not None,
    )


@cache
def authenticator() -> Authenticator:
    settings = get_settings()
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
    return Authenticator("easyauth")


@cache
def approvals() -> ApprovalService:
    return ApprovalService(journal())


@cache
def approval_links() -> ApprovalLinks:
    from shared.adapters.table_approval_nonce_store import TableApprovalNonceStore
    from shared.app.approval_links import ApprovalLinkSigner, parse_signing_keys

    settings = get_settings()
    if settings.approval_signing_keys is None:
        raise ConfigurationError("approval links need WRITEBACK_APPROVAL_SIGNING_KEYS")
    nonces = TableApprovalNonceStore(table_service(), prefix=settings.table_prefix)
    nonces.ensure_tables()
    signer = ApprovalLinkSigner(parse_signing_keys(settings.approval_signing_keys.get_secret_value()))
    return ApprovalLinks(signer=signer, nonces=nonces)


@cache
def approval_notices() -> ApprovalNotices:
    from shared.adapters.approval_webhook import WebhookNotifier
    from shared.app.approval_links import ApprovalLinkSigner, parse_signing_keys

    settings = get_settings()
    if settings.approval_webhook_url is None or settings.approval_signing_keys is None:
        raise ConfigurationError("approval notifications need WRITEBACK_APPROVAL_WEBHOOK_URL and ..._SIGNING_KEYS")
    base_url = settings.public_base_url or settings.local_runtime_url
    if not base_url:
        raise ConfigurationError("approval notifications need WRITEBACK_PUBLIC_BASE_URL (the gateway's public URL)")
    return ApprovalNotices(
        journal(),
        WebhookNotifier(settings.approval_webhook_url.get_secret_value()),
        ApprovalLinkSigner(parse_signing_keys(settings.approval_signing_keys.get_secret_value())),
        base_url,
    )


@cache
def operations() -> OperationsService:
    return OperationsService(journal(), publisher(), sweep_state())


@cache
def changes_api() -> ChangesApi:
    settings = get_settings()
    return ChangesApi(
        authenticate=lambda headers: authenticator().authenticate(headers),
        intake=intake,
        journal=journal,
        approvals=approvals,
        policy=policy,
        max_body_bytes=settings.max_body_bytes,
        approval_links=approval_links if settings.approval_signing_keys is not None else None,
        operations=operations,
        known_targets=lambda: targets().ids(),
    )


def health_probes() -> dict[str, Callable[[], Any]]:
    """What readiness checks: configuration, and that Table and Blob storage answer."""
    return {
        "targets": targets,
        "policy": policy,
        "tableStorage": lambda: next(iter(table_service().list_tables(results_per_page=1)), None),
        "blobStorage": payload_store,
    }


def reset() -> None:
    """Forget every built adapter and the settings (tests change the environment between cases)."""
    get_settings.cache_clear()
    for factory in (
        table_service,
        blob_service,
        change_store,
        sweep_state,
        idempotency_store,
        payload_store,
        targets,
        policy,
        journal,
        publisher,
        intake,
        sweeper,
        operations,
        pipeline,
        authenticator,
        changes_api,
    ):
        factory.cache_clear()
    with _lock:
        _clients.clear()
