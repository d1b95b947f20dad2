"""``.local/endpoints.json``: where the local services listen, and the settings the gateway needs to use them.

``make services`` (``tools/services``) writes the file; the local runtime reads it to point the app at them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.core.targets import env_override_name

ENDPOINTS_FILE = Path(__file__).resolve().parents[1] / ".local" / "endpoints.json"


def gateway_environment(endpoints: dict[str, Any]) -> dict[str, str]:
    """App settings pointing the gateway at the local services (what local.settings.json would hold)."""
    env = {
        "WRITEBACK_STORAGE_CONNECTION_STRING": endpoints["storageConnectionString"],
        "AzureWebJobsStorage": endpoints["storageConnectionString"],
        "IDENTITY_ENDPOINT": endpoints["identityEndpoint"],
        "IDENTITY_HEADER": endpoints["identityHeader"],
        "WRITEBACK_TASK_HUB": "writebacklocal",
        "WRITEBACK_QUEUE_NAME": "writeback-changes",
    }
    for target, url in endpoints["fhir"].items():
        env[env_override_name(target)] = url
    return env


def read_endpoints(path: Path = ENDPOINTS_FILE) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: start the local services first (make services)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
