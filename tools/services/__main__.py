"""`make services`: start Azurite, the local token endpoint and the local FHIR server in the foreground.

Ports come from WRITEBACK_DEV_FHIR_PORT (8103), WRITEBACK_DEV_TOKEN_PORT (8104) and WRITEBACK_DEV_AZURITE_PORT
(10000; queue and table on the next two). Azurite keeps its data under .local/azurite; the FHIR server keeps its
data in memory, so it starts empty each time. The URLs are printed and written to .local/endpoints.json.
Ctrl-C (or SIGTERM) stops everything.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from tools.services.azurite import start_azurite
from tools.services.fhir_server import start_fhir_server
from tools.services.process import REPO_ROOT
from tools.services.token_endpoint import start_token_endpoint

LOCAL_DIR = REPO_ROOT / ".local"
FHIR_TARGET = "local-ehr"
FHIR_AUDIENCE = "api://local-ehr"


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def main() -> int:
    log_dir = LOCAL_DIR / "logs"
    stopping: list[Callable[[], None]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        azurite_port = _port("WRITEBACK_DEV_AZURITE_PORT", 10000)
        azurite = start_azurite(
            blob_port=azurite_port,
            queue_port=azurite_port + 1,
            table_port=azurite_port + 2,
            location=LOCAL_DIR / "azurite",
            log_dir=log_dir,
        )
        stopping.append(azurite.stop)
        identity_header = secrets.token_hex(16)
        token = start_token_endpoint(
            _port("WRITEBACK_DEV_TOKEN_PORT", 8104), identity_header=identity_header, log_dir=log_dir
        )
        stopping.append(token.stop)
        fhir = start_fhir_server(
            _port("WRITEBACK_DEV_FHIR_PORT", 8103), jwks_url=token.jwks_url, audience=FHIR_AUDIENCE, log_dir=log_dir
        )
        stopping.append(fhir.stop)
        endpoints = {
            "api": f"http://127.0.0.1:{os.environ.get('WRITEBACK_DEV_PORT', '7071')}/api/v1",
            "fhir": {FHIR_TARGET: fhir.base_url},
            "fhirScopes": {FHIR_TARGET: f"{FHIR_AUDIENCE}/.default"},
            "identityEndpoint": token.url,
            "identityHeader": token.identity_header,
            "storageConnectionString": azurite.connection_string,
        }
        LOCAL_DIR.mkdir(exist_ok=True)
        path = LOCAL_DIR / "endpoints.json"
        path.write_text(json.dumps(endpoints, indent=2) + "\n")
        print(f"Azurite (tables)   {azurite.table_url}")
        print(f"Azurite (blobs)    {azurite.blob_url}")
        print(f"Token endpoint     {token.url}")
        print(f"FHIR server        {fhir.base_url}  (audience {FHIR_AUDIENCE}, data in memory)")
        print(f"Endpoints file     {path.relative_to(REPO_ROOT)}")
        print(f"Logs               {log_dir.relative_to(REPO_ROOT)}/")
        print("Ctrl-C stops everything.", flush=True)
        while all(s.process.alive() for s in (azurite, token, fhir)):
            time.sleep(0.5)
        print("a service exited; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for stop in reversed(stopping):
            stop()


if __name__ == "__main__":
    sys.exit(main())
