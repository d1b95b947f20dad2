"""The local managed-identity token endpoint, driven by the real ``azure.identity.ManagedIdentityCredential``."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential

from tools.services.token_endpoint import TokenEndpoint

pytestmark = pytest.mark.integration

RESOURCE = "api://local-ehr"


@pytest.fixture
def app_service_env(token_endpoint: TokenEndpoint, monkeypatch: pytest.MonkeyPatch) -> TokenEndpoint:
    """The environment App Service gives a Function App with a managed identity, pointing at the local endpoint."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", token_endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", token_endpoint.identity_header)
    # Its presence would make the credential speak the Service Fabric protocol instead.
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)
    return token_endpoint


def verify(token: str, endpoint: TokenEndpoint, audience: str = RESOURCE) -> dict[str, Any]:
    """Verify the token's signature against the endpoint's JWKS, and its audience and issuer."""
    jwks = httpx.get(endpoint.jwks_url).json()
    kid = jwt.get_unverified_header(token)["kid"]
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == kid]
    claims: dict[str, Any] = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["RS256"], audience=audience, issuer=endpoint.issuer
    )
    return claims


def test_credential_gets_a_token_for_the_resource_signed_by_the_jwks_key(app_service_env: TokenEndpoint) -> None:
    with ManagedIdentityCredential() as credential:
        access = credential.get_token(f"{RESOURCE}/.default")

    claims = verify(access.token, app_service_env)
    now = time.time()
    assert claims["aud"] == RESOURCE
    assert claims["oid"] == claims["sub"]
    assert claims["nbf"] <= now < claims["exp"]
    assert abs(claims["exp"] - (now + 3600)) < 30
    assert abs(access.expires_on - claims["exp"]) <= 1


def test_user_assigned_identity_becomes_the_subject(app_service_env: TokenEndpoint) -> None:
    client_id = "7d9b4c4e-1111-4222-8333-444455556666"
    with ManagedIdentityCredential(client_id=client_id) as credential:
        token = credential.get_token(f"{RESOURCE}/.default").token

    claims = verify(token, app_service_env)
    assert claims["sub"] == claims["oid"] == client_id


def test_credential_raises_on_a_wrong_identity_header(
    app_service_env: TokenEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header")
    with ManagedIdentityCredential() as credential, pytest.raises(ClientAuthenticationError):
        credential.get_token(f"{RESOURCE}/.default")


def test_protocol_answers(token_endpoint: TokenEndpoint) -> None:
    params = {"api-version": "2019-08-01", "resource": "https://example.org"}
    good = {"X-IDENTITY-HEADER": token_endpoint.identity_header}

    with httpx.Client() as http:
        ok = http.get(token_endpoint.url, params=params, headers=good)
        assert ok.status_code == 200
        body = ok.json()
        assert body["token_type"] == "Bearer"
        assert body["resource"] == "https://example.org"
        assert isinstance(body["expires_on"], str) and int(body["expires_on"]) > time.time()
        claims = verify(body["access_token"], token_endpoint, audience="https://example.org")
        assert claims["aud"] == "https://example.org"

        assert http.get(token_endpoint.url, params=params).status_code == 401
        assert http.get(token_endpoint.url, params=params, headers={"X-IDENTITY-HEADER": "x"}).status_code == 401
        assert http.get(token_endpoint.url, params={"api-version": "2019-08-01"}, headers=good).status_code == 400
        assert http.get(token_endpoint.url, params={"resource": "x"}, headers=good).status_code == 400
        assert http.get(token_endpoint.url.replace("/msi/token", "/healthz")).status_code == 200
