"""`make services` / `make run`: start Azurite, the local token endpoint, the local FHIR server and the local OpenID
provider in the foreground; with ``--with-gateway`` (``make run``) also the gateway itself in the local runtime, on
``WRITEBACK_DEV_INSTANCES`` instances (``make run INSTANCES=2``), behind the App Service Authentication emulation when
``WRITEBACK_DEV_EASYAUTH=1`` (``make run EASYAUTH=1``). Variables already set in the environment win over the
services' values.

Ports come from WRITEBACK_DEV_FHIR_PORT (8103), WRITEBACK_DEV_TOKEN_PORT (8104), WRITEBACK_DEV_OPENID_PORT (8105) and
WRITEBACK_DEV_AZURITE_PORT (10000; queue and table on the next two). Azurite keeps its data under .local/azurite and
the OpenID provider its key and client secrets under .local/openid; the FHIR server keeps its data in memory, so it
starts empty each time. The URLs are printed and written to .local/endpoints.json. Ctrl-C (or SIGTERM) stops
everything.

``--local-settings PATH`` (``make services`` passes ``local.settings.json``) also writes Core Tools' settings file,
pointing ``func start`` at these services (``tools.services.local_settings``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from devhost.easyauth.config import enabled as easyauth_enabled
from devhost.endpoints import apply_gateway_environment
from devhost.launch import launch
from devhost.supervisor import Supervisor
from tools.services.azurite import start_azurite
from tools.services.fhir_server import start_fhir_server
from tools.services.local_settings import write_local_settings
from tools.services.openid_provider import start_openid_provider
from tools.services.process import REPO_ROOT
from tools.services.seed import bearer_token, seed_patients
from tools.services.token_endpoint import start_token_endpoint

LOCAL_DIR = Path(os.environ.get("WRITEBACK_DEV_STATE_DIR", REPO_ROOT / ".local"))
FHIR_TARGET = "local-ehr"
FHIR_AUDIENCE = "api://local-ehr"


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.services")
    parser.add_argument("--with-gateway", action="store_true", help="also run the gateway in the local runtime")
    parser.add_argument(
        "--local-settings",
        type=Path,
        metavar="PATH",
        help="also write Core Tools' local.settings.json there, pointing `func start` at these services",
    )
    args = parser.parse_args(argv)
    log_dir = LOCAL_DIR / "logs"
    stopping: list[Callable[[], None]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started in the background, where SIGINT starts ignored
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
        openid = start_openid_provider(
            _port("WRITEBACK_DEV_OPENID_PORT", 8105), state_dir=LOCAL_DIR / "openid", log_dir=log_dir
        )
        stopping.append(openid.stop)
        endpoints = {
            "api": f"http://127.0.0.1:{os.environ.get('WRITEBACK_DEV_PORT', '7071')}/api/v1",
            "fhir": {FHIR_TARGET: fhir.base_url},
            "fhirScopes": {FHIR_TARGET: f"{FHIR_AUDIENCE}/.default"},
            "identityEndpoint": token.url,
            "identityHeader": token.identity_header,
            "storageConnectionString": azurite.connection_string,
            "openId": openid.endpoints_entry(),
        }
        seeded = seed_patients(fhir.base_url, bearer_token(token.url, token.identity_header, FHIR_AUDIENCE))
        if args.with_gateway:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            logging.getLogger("azure").setLevel(logging.WARNING)
            apply_gateway_environment(endpoints)  # what the user has set wins
            runtime = launch(app_dir=REPO_ROOT, state_dir=LOCAL_DIR / "runtime", port=_port("WRITEBACK_DEV_PORT", 7071))
            stopping.append(runtime.stop)
            instances = f", {len(runtime.instances)} instances" if isinstance(runtime, Supervisor) else ""
            print(f"Gateway API        {endpoints['api']}  (health: {endpoints['api']}/health{instances})")
            review = str(endpoints["api"]).removesuffix("/api/v1") + "/review"
            if easyauth_enabled():
                print(f"Review page        {review}  (App Service Authentication emulated: sign in as a demo user)")
            else:
                print(f"Review page        {review}  (no sign-in: EASYAUTH=1 emulates App Service Authentication)")
        # Written once everything, the gateway's instances included, is ready (Core Tools' settings just before): a
        # script that waits for the file finds the whole stack answering.
        core_tools = write_local_settings(args.local_settings, endpoints) if args.local_settings else None
        LOCAL_DIR.mkdir(exist_ok=True)
        path = LOCAL_DIR / "endpoints.json"
        path.write_text(json.dumps(endpoints, indent=2) + "\n")
        print(f"Azurite (tables)   {azurite.table_url}")
        print(f"Azurite (blobs)    {azurite.blob_url}")
        print(f"Token endpoint     {token.url}")
        print(f"FHIR server        {fhir.base_url}  (audience {FHIR_AUDIENCE}, data in memory)")
        print(f"OpenID provider    {openid.issuer}  (demo users: config/demo-users.yaml)")
        print(f"Seeded             {', '.join(seeded)}")
        print(f"Endpoints file     {path}")
        if core_tools:
            print(f"Core Tools         {core_tools}")
        print(f"Logs               {log_dir}/")
        print("Ctrl-C stops everything.", flush=True)
        while all(s.process.alive() for s in (azurite, token, fhir, openid)):
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
