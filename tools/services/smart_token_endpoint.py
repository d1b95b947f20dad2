"""Start the local SMART Backend Services token endpoint (``tools/smart_token_endpoint.py``) as a child process.

The registered client's JWKS is written to a file next to the logs and handed to the endpoint at start.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tools.services.process import ManagedProcess, free_port, start_when_ready

HOST = "127.0.0.1"


@dataclass
class SmartTokenEndpoint:
    url: str  # the token URL (the assertion's aud), e.g. http://127.0.0.1:P/token
    base_url: str
    client_id: str
    process: ManagedProcess

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    def stats(self) -> dict[str, int]:
        resp = httpx.get(f"{self.base_url}/_control/stats", timeout=5)
        resp.raise_for_status()
        return dict(resp.json())

    def fail_next(self, status: int = 503, count: int = 1) -> None:
        """The next ``count`` token requests get ``status``."""
        httpx.post(f"{self.base_url}/_control/fail", params={"status": status, "count": count}, timeout=5)

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/_control/reset", timeout=5).raise_for_status()

    def stop(self) -> None:
        self.process.stop()


def start_smart_token_endpoint(
    port: int | None = None,
    *,
    client_id: str,
    jwks: dict[str, Any],
    log_dir: Path | None = None,
    ttl: int = 300,
) -> SmartTokenEndpoint:
    """Start the endpoint on 127.0.0.1 for one registered client and wait until it answers ``/healthz``."""
    port = port or free_port()
    jwks_dir = Path(tempfile.mkdtemp(prefix="smart-jwks-", dir=log_dir))
    jwks_file = jwks_dir / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    argv = [
        sys.executable,
        "-m",
        "tools.smart_token_endpoint",
        "--port",
        str(port),
        "--client-id",
        client_id,
        "--jwks-file",
        str(jwks_file),
        "--ttl",
        str(ttl),
    ]
    base_url = f"http://{HOST}:{port}"
    env = {"PYTHONUNBUFFERED": "1"}
    process = start_when_ready(
        "smart-token-endpoint", argv, f"{base_url}/healthz", timeout=30, env=env, log_dir=log_dir
    )
    return SmartTokenEndpoint(url=f"{base_url}/token", base_url=base_url, client_id=client_id, process=process)
