"""Print a bearer token for the local FHIR server, for curl: ``TOKEN=$(.venv/bin/python -m tools.fhir_token)``.

Reads the token endpoint and the identity header from ``.local/endpoints.json`` (written by ``make run``).
"""

from __future__ import annotations

import os
from pathlib import Path

from devhost.endpoints import ENDPOINTS_FILE, read_endpoints
from tools.services.seed import bearer_token


def main() -> None:
    path = Path(os.environ.get("WRITEBACK_DEV_STATE_DIR", ENDPOINTS_FILE.parent)) / "endpoints.json"
    endpoints = read_endpoints(path)
    scope = endpoints["fhirScopes"]["local-ehr"].removesuffix("/.default")
    print(bearer_token(endpoints["identityEndpoint"], endpoints["identityHeader"], scope))


if __name__ == "__main__":
    main()
