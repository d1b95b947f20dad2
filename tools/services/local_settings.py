"""``local.settings.json`` for Azure Functions Core Tools (``func start``), pointed at the services ``make services``
started: Azurite for the app's tables and blobs and for the host's own storage (Durable Functions' Azure Storage
provider, timer leases), the local FHIR server, and the local token endpoint for the app's managed-identity tokens.

The file's shape and ``Values`` are Core Tools' (https://learn.microsoft.com/azure/azure-functions/functions-develop-local#local-settings-file):
``IsEncrypted: false``, ``FUNCTIONS_WORKER_RUNTIME: python``, ``AzureWebJobsStorage``. For the change queue it names
the Service Bus emulator (Docker), by the connection string Microsoft publishes for it
(https://learn.microsoft.com/azure/service-bus-messaging/test-locally-with-service-bus-emulator#interact-with-the-emulator);
a file whose ``ServiceBusConnection__fullyQualifiedNamespace`` is set (a real namespace, reached with the developer's
identity) keeps that instead. Values the services own are rewritten at each start (ports, the per-run identity
header); every other value already in the file is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devhost.endpoints import gateway_environment

# The trigger's `connection` (orchestrators/dispatcher.py) and Microsoft's published emulator connection string: a
# well-known local value like Azurite's key, not a secret.
SERVICE_BUS_CONNECTION = "ServiceBusConnection"
SERVICE_BUS_NAMESPACE = f"{SERVICE_BUS_CONNECTION}__fullyQualifiedNamespace"
SERVICE_BUS_EMULATOR = (
    "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;"
    "UseDevelopmentEmulator=true;"
)


def core_tools_values(endpoints: dict[str, Any]) -> dict[str, str]:
    """The ``Values`` that point ``func start`` and the app at the local services listed in ``endpoints``."""
    values = {"FUNCTIONS_WORKER_RUNTIME": "python"}
    # What the local runtime gets from the same services, less its own settings (WRITEBACK_DEV_*).
    values |= {k: v for k, v in gateway_environment(endpoints).items() if not k.startswith("WRITEBACK_DEV_")}
    values[SERVICE_BUS_CONNECTION] = SERVICE_BUS_EMULATOR
    return values


def write_local_settings(path: Path, endpoints: dict[str, Any]) -> str:
    """Write (or refresh) ``path``; returns what was done, for the console."""
    current: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if current.get("IsEncrypted"):
        return f"{path} is encrypted (func settings encrypt): left alone"
    values = core_tools_values(endpoints)
    kept: dict[str, Any] = dict(current.get("Values") or {})
    if kept.get(SERVICE_BUS_NAMESPACE):
        values.pop(SERVICE_BUS_CONNECTION)  # the file names a real namespace: keep it
        kept.pop(SERVICE_BUS_CONNECTION, None)
    settings = {**current, "IsEncrypted": False, "Values": {**kept, **values}}
    path.write_text(json.dumps(settings, indent=2) + "\n")
    queue = "a Service Bus namespace" if SERVICE_BUS_CONNECTION not in values else "the Service Bus emulator"
    return f"{path} (func start: Azurite, the FHIR server, the token endpoint; the queue on {queue})"
