"""Shared fixtures: the real local services (Azurite, the FHIR server, the token endpoint), started once per session.

Each service listens on a free loopback port and is stopped (with its whole process group) when the session ends,
also when tests fail or the run is interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:
    from tools.services.azurite import Azurite
    from tools.services.fhir_server import FhirServer
    from tools.services.token_endpoint import TokenEndpoint

FHIR_AUDIENCE = "api://local-ehr"


@pytest.fixture(scope="session")
def token_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RSA key the token endpoint signs with; tests may sign their own (expired, wrong audience) tokens with it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("token") / "signing-key.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


@pytest.fixture(scope="session")
def token_endpoint(token_key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenEndpoint]:
    from tools.services.token_endpoint import start_token_endpoint

    endpoint = start_token_endpoint(key_file=token_key_file, log_dir=tmp_path_factory.mktemp("logs"))
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def fhir_server(token_endpoint: TokenEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirServer]:
    from tools.services.fhir_server import start_fhir_server

    server = start_fhir_server(
        jwks_url=token_endpoint.jwks_url, audience=FHIR_AUDIENCE, log_dir=tmp_path_factory.mktemp("logs")
    )
    yield server
    server.stop()


@pytest.fixture
def fhir(fhir_server: FhirServer) -> FhirServer:
    """The FHIR server, emptied, with no faults pending."""
    fhir_server.reset()
    return fhir_server


@pytest.fixture(scope="session")
def fhir_token(token_endpoint: TokenEndpoint) -> str:
    """A valid bearer token for the local FHIR server, from the token endpoint."""
    resp = httpx.get(
        token_endpoint.url,
        params={"api-version": "2019-08-01", "resource": FHIR_AUDIENCE},
        headers={"X-IDENTITY-HEADER": token_endpoint.identity_header},
    )
    resp.raise_for_status()
    return str(resp.json()["access_token"])


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    from tools.services.azurite import start_azurite

    service = start_azurite(log_dir=tmp_path_factory.mktemp("logs"))
    yield service
    service.stop()


@pytest.fixture
def managed_identity_env(token_endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The real ManagedIdentityCredential against the local token endpoint (App Service's IDENTITY_* variables)."""
    from shared.adapters.identity import reset_token_providers

    monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", token_endpoint.identity_header)
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    reset_token_providers()
    yield
    reset_token_providers()
