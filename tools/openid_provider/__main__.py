"""``python -m tools.openid_provider``: a local OpenID Connect provider shaped as Microsoft Entra ID (v2.0), for the
local runtime's App Service Authentication emulation (``WRITEBACK_DEV_EASYAUTH=1``) and for scripts.

    python -m tools.openid_provider --port 8105 --state-dir .local/openid [--directory config/demo-users.yaml]

The signing key and the client secrets are created at the first start under ``--state-dir`` and kept; the demo
people and apps come from the directory file. Serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tools.loopback_http import serve_until_stopped
from tools.openid_provider.directory import DEFAULT_DIRECTORY, SECRETS_FILE, load_directory
from tools.openid_provider.server import OpenIdProvider
from tools.openid_provider.tokens import load_or_create_key

KEY_FILE = "signing-key.pem"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.openid_provider", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the key and client secrets are kept")
    parser.add_argument("--directory", type=Path, default=DEFAULT_DIRECTORY, help="the demo people and apps")
    args = parser.parse_args(argv)
    directory = load_directory(args.directory, args.state_dir / SECRETS_FILE)
    server = OpenIdProvider(args.port, directory, load_or_create_key(args.state_dir / KEY_FILE))
    serve_until_stopped(
        server,
        f"openid-provider listening on {server.base_url}: issuer {server.issuer}, "
        f"site client id {directory.site.client_id}, {len(directory.users)} people, kid {server.minter.key.kid}",
    )


if __name__ == "__main__":
    main()
