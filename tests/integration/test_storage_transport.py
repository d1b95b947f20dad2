"""The Storage clients' transport reads the proxy and CA-bundle environment once per host, with requests' own rules:
a proxy in ``HTTP_PROXY`` is used (a real forwarding proxy in front of Azurite sees the requests), ``NO_PROXY``
bypasses it, ``REQUESTS_CA_BUNDLE`` becomes the bundle to verify with."""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters.storage_transport import EnvironmentOnceTransport

pytestmark = pytest.mark.integration


class ForwardingProxy(BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy: requests arrive with an absolute URL and are passed on as they are."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    seen: list[str] = []

    def _forward(self) -> None:
        target = urlsplit(self.path)
        ForwardingProxy.seen.append(f"{self.command} {target.path}")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        path = target.path + (f"?{target.query}" if target.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
        upstream.request(self.command, path, body=body, headers=headers)
        response = upstream.getresponse()
        payload = response.read()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = _forward  # noqa: N815 - http.server's names

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ForwardingProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ForwardingProxy.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _round_trip(connection_string: str) -> None:
    service = TableServiceClient.from_connection_string(connection_string, transport=EnvironmentOnceTransport())
    table = service.create_table(f"px{uuid.uuid4().hex[:10]}")
    table.create_entity({"PartitionKey": "p", "RowKey": "r", "v": 1})
    assert table.get_entity("p", "r")["v"] == 1


def test_a_proxy_from_the_environment_is_used(azurite: Any, proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    _round_trip(azurite.connection_string)
    assert any(line.startswith("POST") for line in ForwardingProxy.seen)
    assert any(line.startswith("GET") for line in ForwardingProxy.seen)


def test_no_proxy_bypasses_it(azurite: Any, proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _round_trip(azurite.connection_string)
    assert ForwardingProxy.seen == []


def test_the_ca_bundle_from_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corporate-root.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = EnvironmentOnceTransport().environment_for("https://acct.table.core.windows.net/t")
    assert settings["verify"] == "/etc/ssl/corporate-root.pem"
    assert settings["proxies"]["https"] == "http://proxy.corp.example:3128"
