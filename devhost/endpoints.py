"""``.local/endpoints.json``: where the local services listen, and the settings the gateway needs to use them.

``make services`` (``tools/services``) writes the file; the local runtime reads it to point the app at them. A
variable already set in the environment wins over the file, as it wins over ``local.settings.json``: so
``WRITEBACK_TARGET_<ID>_BASE_URL=...  make gateway`` points a target elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from shared.core.targets import env_override_name

ENDPOINTS_FILE = Path(__file__).resolve().parents[1] / ".local" / "endpoints.json"

log = logging.getLogger("devhost.endpoints")


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
    openid = endpoints.get("openId")
    if openid:  # the local OpenID provider, for the App Service Authentication emulation (WRITEBACK_DEV_EASYAUTH=1)
        env["WRITEBACK_DEV_EASYAUTH_ISSUER"] = openid["issuer"]
        env["WRITEBACK_DEV_EASYAUTH_CLIENT_ID"] = openid["clientId"]
        env["WRITEBACK_DEV_EASYAUTH_CLIENT_SECRETS_FILE"] = openid["clientSecretsFile"]
    return env


def read_endpoints(path: Path = ENDPOINTS_FILE) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: start the local services first (make services)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def apply_gateway_environment(
    endpoints: dict[str, Any], environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Put ``gateway_environment(endpoints)`` into the environment, except where a variable is already set (the
    user's setting wins); returns what was put."""
    env = os.environ if environ is None else environ
    applied: dict[str, str] = {}
    for key, value in gateway_environment(endpoints).items():
        if key in env:
            if env[key] != value:
                log.info("%s is set in the environment: it wins over the local services' value", key)
            continue
        env[key] = applied[key] = value
    return applied
