"""No bearer token over plain http except on loopback, against the real FHIR server (which checks tokens) and the real
managed-identity token endpoint.

A relay on this machine's own non-loopback address forwards to the FHIR server and records what reaches it: a
target whose plain-http URL is that address gets no token (the targets file refuses it; a client built around that
check refuses the request before a token is asked for), while loopback, by address or by name, keeps working.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import AzureIdentityTokenProvider, token_provider_for
from shared.core.errors import AuthError, ConfigurationError
from shared.core.targets import TargetConfig, TargetRegistry
from tools.services.recording_proxy import RecordingProxy

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


@pytest.fixture
def relay_proxy(fhir: Any) -> Iterator[RecordingProxy]:
    """A proxy on this machine's own non-loopback address, relaying to the FHIR server as requests came."""
    address = own_non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    parts = urlsplit(fhir.base_url)
    with RecordingProxy(parts.hostname or "127.0.0.1", parts.port or 80, bind=address) as proxy:
        yield proxy


@pytest.fixture
def relay(relay_proxy: RecordingProxy, fhir: Any) -> str:
    """``http://<own address>:<port>/fhir/R4``, relayed to the FHIR server."""
    return f"http://{relay_proxy.address}:{relay_proxy.port}{urlsplit(fhir.base_url).path}"


def seen(proxy: RecordingProxy) -> list[tuple[str, str, bool]]:
    """What reached the relay: method, path, and whether it carried an Authorization header."""
    return [(r.method, r.path, "authorization" in r.header_names) for r in proxy.requests]


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
def test_a_token_goes_over_plain_http_to_loopback(
    fhir: Any, managed_identity_env: None, tmp_path: Path, host: str
) -> None:
    base_url = fhir.base_url.replace("127.0.0.1", host)
    target = TargetRegistry.from_file(targets_file(tmp_path, base_url, MANAGED_IDENTITY), {}).get("ehr")
    assert target is not None
    client, tokens = client_for(target)
    created = client.create(PATIENT)  # the server checks the token: 401 without one
    assert created.status == 201 and tokens.asked == 1


def test_the_targets_file_refuses_a_token_over_plain_http_off_loopback(
    relay: str, relay_proxy: RecordingProxy, tmp_path: Path
) -> None:
    host = urlsplit(relay).hostname
    with pytest.raises(ConfigurationError, match=rf"targets\.ehr: base_url is plain http to '{host}'"):
        TargetRegistry.from_file(targets_file(tmp_path, relay, MANAGED_IDENTITY), {})
    # the same address over the setting, as a deployment would give it
    with pytest.raises(ConfigurationError, match=r"\(base_url from WRITEBACK_TARGET_EHR_BASE_URL\)"):
        TargetRegistry.from_file(
            targets_file(tmp_path, "https://ehr.example.org", MANAGED_IDENTITY),
            {"WRITEBACK_TARGET_EHR_BASE_URL": relay},
        )
    assert seen(relay_proxy) == []


def test_a_client_refuses_before_any_token_is_asked_or_anything_is_sent(
    fhir: Any, relay: str, relay_proxy: RecordingProxy, managed_identity_env: None, tmp_path: Path
) -> None:
    valid = TargetRegistry.from_file(targets_file(tmp_path, fhir.base_url, MANAGED_IDENTITY), {}).get("ehr")
    assert valid is not None
    off_loopback = valid.model_copy(update={"base_url": relay})  # built around the file's check
    client, tokens = client_for(off_loopback)
    for call in (lambda: client.read("Patient", "p1"), lambda: client.create(PATIENT)):
        with pytest.raises(AuthError, match="refused to send a bearer token over plain http"):
            call()
    assert tokens.asked == 0 and seen(relay_proxy) == [] and fhir.stats()["requests"] == 0


def test_without_auth_plain_http_off_loopback_carries_no_token(
    fhir: Any, relay: str, relay_proxy: RecordingProxy, tmp_path: Path
) -> None:
    target = TargetRegistry.from_file(targets_file(tmp_path, relay, "{type: none}"), {}).get("ehr")
    assert target is not None
    client = HttpFhirClient(target, http=httpx.Client(trust_env=False))
    with pytest.raises(AuthError):  # the local FHIR server wants a token: this target has none to give
        client.read("Patient", "p1")
    assert seen(relay_proxy) == [("GET", "/fhir/R4/Patient/p1", False)]
