"""Start the local OpenID provider (``tools/openid_provider``) as a child process.

The returned :class:`OpenIdProviderService` names what the App Service Authentication emulation needs (the issuer,
the site's client id, the file holding the client secrets) and what ``.local/endpoints.json`` records as ``openId``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tools.openid_provider.directory import DEFAULT_DIRECTORY, SECRETS_FILE
from tools.services.process import ManagedProcess, free_port, start_when_ready

HOST = "127.0.0.1"


@dataclass
class OpenIdProviderService:
    issuer: str  # http://127.0.0.1:P/<tenant>/v2.0; discovery at {issuer}/.well-known/openid-configuration
    site_client_id: str
    secrets_file: Path
    key_file: Path
    process: ManagedProcess

    def endpoints_entry(self) -> dict[str, Any]:
        """The ``openId`` entry of ``.local/endpoints.json``."""
        return {"issuer": self.issuer, "clientId": self.site_client_id, "clientSecretsFile": str(self.secrets_file)}

    def client_secret(self, client_id: str) -> str:
        secret: str = json.loads(self.secrets_file.read_text())[client_id]
        return secret

    def stop(self) -> None:
        self.process.stop()


def start_openid_provider(
    port: int | None = None,
    *,
    state_dir: Path,
    directory: Path = DEFAULT_DIRECTORY,
    log_dir: Path | None = None,
) -> OpenIdProviderService:
    """Start the provider on 127.0.0.1 and wait until its discovery document answers."""
    port = port or free_port()
    document = yaml.safe_load(directory.read_text())
    tenant, site = str(document["tenant_id"]), str(document["site"]["client_id"])
    issuer = f"http://{HOST}:{port}/{tenant}/v2.0"
    argv = [sys.executable, "-m", "tools.openid_provider", "--port", str(port), "--state-dir", str(state_dir)]
    argv += ["--directory", str(directory)]
    process = start_when_ready(
        "openid-provider",
        argv,
        f"{issuer}/.well-known/openid-configuration",
        timeout=30,
        env={"PYTHONUNBUFFERED": "1"},
        log_dir=log_dir,
    )
    return OpenIdProviderService(
        issuer=issuer,
        site_client_id=site,
        secrets_file=state_dir.resolve() / SECRETS_FILE,
        key_file=state_dir.resolve() / "signing-key.pem",
        process=process,
    )
