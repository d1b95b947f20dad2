"""Start the local managed-identity token endpoint (``tools/token_endpoint.py``) as a child process.

The returned :class:`TokenEndpoint` carries what the app needs as ``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER`` and what a
resource server needs to verify the tokens (``jwks_url``, ``issuer``). The identity header is random per start unless
given, and is passed through the environment, not the command line.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.services.process import ManagedProcess, free_port, start_when_ready

HOST = "127.0.0.1"


@dataclass
class TokenEndpoint:
    url: str  # the IDENTITY_ENDPOINT value, e.g. http://127.0.0.1:P/msi/token
    identity_header: str
    jwks_url: str
    issuer: str
    process: ManagedProcess

    def stop(self) -> None:
        self.process.stop()


def start_token_endpoint(
    port: int | None = None,
    *,
    key_file: Path | None = None,
    identity_header: str | None = None,
    log_dir: Path | None = None,
) -> TokenEndpoint:
    """Start the token endpoint on 127.0.0.1 and wait until it answers ``/healthz``."""
    port = port or free_port()
    identity_header = identity_header or secrets.token_urlsafe(24)
    argv = [sys.executable, "-m", "tools.token_endpoint", "--port", str(port)]
    if key_file is not None:
        argv += ["--key-file", str(key_file)]
    env = {"TOKEN_ENDPOINT_IDENTITY_HEADER": identity_header, "PYTHONUNBUFFERED": "1"}
    base_url = f"http://{HOST}:{port}"
    process = start_when_ready("token-endpoint", argv, f"{base_url}/healthz", timeout=30, env=env, log_dir=log_dir)
    return TokenEndpoint(
        url=f"{base_url}/msi/token",
        identity_header=identity_header,
        jwks_url=f"{base_url}/.well-known/jwks.json",
        issuer=f"{base_url}/",
        process=process,
    )
