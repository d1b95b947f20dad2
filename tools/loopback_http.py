"""What the loopback token endpoints (``token_endpoint``, ``smart_token_endpoint``) share: a threading server on
127.0.0.1 that knows its base URL, a handler that answers JSON, and serving until SIGTERM or Ctrl-C."""

from __future__ import annotations

import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

HOST = "127.0.0.1"


class LoopbackServer(ThreadingHTTPServer):
    """A server on ``HOST``; ``port`` 0 takes any free port, and ``base_url`` names the one taken."""

    daemon_threads = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__((HOST, port), handler)
        self.base_url = f"http://{HOST}:{self.server_address[1]}"


class JsonHandler(BaseHTTPRequestHandler):
    """Answers JSON (never cached), ``GET /healthz`` itself and other GETs with ``get``; logs to stderr under
    ``log_name``."""

    protocol_version = "HTTP/1.1"
    log_name = "loopback"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._json(200, {"status": "ok"})
        else:
            self.get(url)

    def get(self, url: SplitResult) -> None:
        self._not_found(url.path)

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _not_found(self, path: str) -> None:
        self._json(404, {"error": "not_found", "error_description": f"No route {path}"})

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_name}: {self.address_string()} {format % args}\n")


def _exit_on_signal(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(0)


def serve_until_stopped(server: ThreadingHTTPServer, banner: str) -> None:
    """Print ``banner`` and serve until SIGTERM or Ctrl-C; the socket is closed either way."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    print(banner, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
