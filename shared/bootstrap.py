"""The composition root: builds the real adapters from settings, lazily and once per process.

Triggers and activities ask here for a port; tests build fakes or adapters directly instead.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared.adapters.blob_payload_store import BlobPayloadStore
from shared.adapters.table_change_store import TableChangeStore
from shared.adapters.table_idempotency_store import TableIdempotencyStore
from shared.config import Settings, get_settings
from shared.errors import ConfigurationError
from shared.targets import TargetRegistry

_lock = threading.Lock()


def _credential(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if settings.managed_identity_client_id:
        return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


@cache
def table_service() -> TableServiceClient:
    settings = get_settings()
    if settings.storage_connection_string:
        return TableServiceClient.from_connection_string(settings.storage_connection_string)
    if settings.table_endpoint:
        return TableServiceClient(settings.table_endpoint, credential=_credential(settings))
    raise ConfigurationError("set WritebackStorage__tableServiceUri (or a storage connection string locally)")


@cache
def blob_service() -> BlobServiceClient:
    settings = get_settings()
    if settings.storage_connection_string:
        return BlobServiceClient.from_connection_string(settings.storage_connection_string)
    if settings.blob_endpoint:
        return BlobServiceClient(settings.blob_endpoint, credential=_credential(settings))
    raise ConfigurationError("set WritebackStorage__blobServiceUri (or a storage connection string locally)")


@cache
def change_store() -> TableChangeStore:
    with _lock:
        store = TableChangeStore(table_service(), prefix=get_settings().table_prefix)
        store.ensure_tables()
        return store


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
