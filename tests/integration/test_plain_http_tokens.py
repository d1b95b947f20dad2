"""No bearer token over plain http except on loopback, against the real FHIR server (which checks tokens) and the real
managed-identity token endpoint.

A relay on this machine's own non-loopback address forwards to the FHIR server and records what reaches it: a
target whose plain-http URL is that address gets no token (the targets file refuses it; a client built around that
check refuses the request before a token is asked for), while loopback, by address or by name, keeps working.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import AzureIdentityTokenProvider, reset_token_providers, token_provider_for
from shared.core.errors import AuthError, ConfigurationError
from shared.core.targets import TargetConfig, TargetRegistry

pytestmark = pytest.mark.integration

SCOPE = "api://local-ehr/.default"
PATIENT = {"resourceType": "Patient", "name": [{"family": "Plain", "given": ["Http"]}]}


def own_non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2 (RFC 5737): a UDP connect only picks the route
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith(("127.", "0.")) else address


class Relay(BaseHTTPRequestHandler):
    """Forwards every request to the FHIR server as it came; records (method, path, had Authorization)."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    seen: list[tuple[str, str, bool]] = []

    def _forward(self) -> None:
        Relay.seen.append((self.command, self.path, "authorization" in {k.lower() for k in self.headers}))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(*Relay.upstream, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body=body, headers=headers)
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

    do_GET = do_POST = do_PUT = do_PATCH = _forward  # noqa: N815 - http.server's names

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def relay(fhir: Any) -> Iterator[str]:
    """``http://<own address>:<port>/fhir/R4``, relayed to the FHIR server."""
    address = own_non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    parts = urlsplit(fhir.base_url)
    Relay.upstream, Relay.seen = (parts.hostname or "127.0.0.1", parts.port or 80), []
    server = ThreadingHTTPServer((address, 0), Relay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{address}:{server.server_address[1]}{parts.path}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def managed_identity(token_endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", token_endpoint.identity_header)
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    reset_token_providers()
    yield
    reset_token_providers()


class CountingTokens:
    """The real managed-identity provider, counting the tokens asked of it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.asked = inner, 0

    def token(self, scope: str) -> str:
        self.asked += 1
        return str(self.inner.token(scope))


def client_for(target: TargetConfig) -> tuple[HttpFhirClient, CountingTokens]:
    provider = token_provider_for(target, managed_identity_client_id=None)
    assert isinstance(provider, AzureIdentityTokenProvider)
    tokens = CountingTokens(provider)
    return HttpFhirClient(target, tokens=tokens, http=httpx.Client(trust_env=False)), tokens


def targets_file(tmp_path: Path, base_url: str, auth: str) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(f"targets:\n  ehr:\n    base_url: {base_url}\n    auth: {auth}\n")
    return path


MANAGED_IDENTITY = "{type: managed_identity, scope: 'api://local-ehr/.default'}"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_token_goes_over_plain_http_to_loopback(fhir: Any, managed_identity: None, tmp_path: Path, host: str) -> None:
    base_url = fhir.base_url.replace("127.0.0.1", host)
    target = TargetRegistry.from_file(targets_file(tmp_path, base_url, MANAGED_IDENTITY), {}).get("ehr")
    assert target is not None
    client, tokens = client_for(target)
    created = client.create(PATIENT)  # the server checks the token: 401 without one
    assert created.status == 201 and tokens.asked == 1


def test_the_targets_file_refuses_a_token_over_plain_http_off_loopback(relay: str, tmp_path: Path) -> None:
    host = urlsplit(relay).hostname
    with pytest.raises(ConfigurationError, match=rf"targets\.ehr: base_url is plain http to '{host}'"):
        TargetRegistry.from_file(targets_file(tmp_path, relay, MANAGED_IDENTITY), {})
    # the same address over the setting, as a deployment would give it
    with pytest.raises(ConfigurationError, match=r"\(base_url from WRITEBACK_TARGET_EHR_BASE_URL\)"):
        TargetRegistry.from_file(
            targets_file(tmp_path, "https://ehr.example.org", MANAGED_IDENTITY),
            {"WRITEBACK_TARGET_EHR_BASE_URL": relay},
        )
    assert Relay.seen == []


def test_a_client_refuses_before_any_token_is_asked_or_anything_is_sent(
    fhir: Any, relay: str, managed_identity: None, tmp_path: Path
) -> None:
    valid = TargetRegistry.from_file(targets_file(tmp_path, fhir.base_url, MANAGED_IDENTITY), {}).get("ehr")
    assert valid is not None
    off_loopback = valid.model_copy(update={"base_url": relay})  # built around the file's check
    client, tokens = client_for(off_loopback)
    for call in (lambda: client.read("Patient", "p1"), lambda: client.create(PATIENT)):
        with pytest.raises(AuthError, match="refused to send a bearer token over plain http"):
            call()
    assert tokens.asked == 0 and Relay.seen == [] and fhir.stats()["requests"] == 0


def test_without_auth_plain_http_off_loopback_carries_no_token(fhir: Any, relay: str, tmp_path: Path) -> None:
    target = TargetRegistry.from_file(targets_file(tmp_path, relay, "{type: none}"), {}).get("ehr")
    assert target is not None
    client = HttpFhirClient(target, http=httpx.Client(trust_env=False))
    with pytest.raises(AuthError):  # the local FHIR server wants a token: this target has none to give
        client.read("Patient", "p1")
    assert Relay.seen == [("GET", "/fhir/R4/Patient/p1", False)]
