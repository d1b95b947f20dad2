"""A recording HTTP proxy: forwards every request to one upstream (Azurite's Table endpoint) and keeps what was
asked, so that a test or a benchmark counts the Table round trips a change costs across processes.

Each request is recorded as method, path and query, and body; the counting is left to the caller (a change's round
trips are the requests whose path or body names its change id). Keep-alive (HTTP/1.1) is kept on both sides, as the
Azure SDK uses it.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import unquote

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"})


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # with the query, percent-decoded
    body: bytes
    header_names: frozenset[str] = frozenset()  # lower-cased

    def names(self, text: str) -> bool:
        return text in self.path or text.encode() in self.body


class RecordingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, bind: str = "127.0.0.1") -> None:
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: ClassVar[threading.local] = threading.local()

            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                names = frozenset(k.lower() for k in self.headers)
                proxy._record(Recorded(self.command, unquote(self.path), body, names))
                connection = getattr(self.upstream, "connection", None)
                if connection is None:
                    connection = self.upstream.connection = http.client.HTTPConnection(
                        upstream_host, upstream_port, timeout=30
                    )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    answer = connection.getresponse()
                    payload = answer.read()
                except (OSError, http.client.HTTPException):
                    connection.close()
                    self.upstream.connection = None
                    self.send_error(502)
                    return
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_MERGE = do_HEAD = _forward  # noqa: N815

        self._server = ThreadingHTTPServer((bind, 0), Handler)
        self._server.daemon_threads = True
        self.address = str(self._server.server_address[0])
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="recording-proxy", daemon=True)

    def _record(self, entry: Recorded) -> None:
        with self._lock:
            self.requests.append(entry)

    def naming(self, text: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.names(text)]

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
