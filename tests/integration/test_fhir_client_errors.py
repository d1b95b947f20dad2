"""The real HTTP FHIR client against the local FHIR server: throttling, outages, timeouts, auth and invalid input
land on the right branch of the error tree; tokens are fetched once and reused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.identity import ManagedIdentityCredential

from shared.adapters.fhir_http import HttpFhirClient
from shared.adapters.identity import AzureIdentityTokenProvider, token_provider_for
from shared.core.errors import AuthError, PermanentError, RetryableError
from shared.core.targets import TargetConfig

pytestmark = pytest.mark.integration

SCOPE = "api://local-ehr/.default"
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:example:mrn", "value": "err-1"}],
    "name": [{"family": "Doe", "given": ["Jane"]}],
}


@pytest.fixture
def make_client(fhir: Any, managed_identity_env: None) -> Callable[..., HttpFhirClient]:
    def make(*, scope: str = SCOPE, timeout: float = 10.0) -> HttpFhirClient:
        target = TargetConfig.model_validate(
            {
                "id": "local-ehr",
                "base_url": fhir.base_url,
                "auth": {"type": "managed_identity", "scope": scope},
                "timeout_seconds": timeout,
                "connect_timeout_seconds": 2.0,
            }
        )
        return HttpFhirClient(target, tokens=token_provider_for(target, managed_identity_client_id=None))

    return make


def test_throttled_with_retry_after(fhir: Any, make_client: Callable[..., HttpFhirClient]) -> None:
    client = make_client()
    fhir.inject(status=429, retry_after=2)
    with pytest.raises(RetryableError) as info:
        client.create(PATIENT)
    assert info.value.downstream_status == 429
    assert info.value.retry_after == 2
    assert "Jane" not in str(info.value) and "Doe" not in str(info.value)
    # the fault was one-shot and nothing was written: the retry succeeds and creates exactly one resource
    created = client.create(PATIENT)
    assert created.status == 201
    assert client.search("Patient", {"identifier": "urn:example:mrn|err-1"})["total"] == 1


def test_unavailable_is_retryable(fhir: Any, make_client: Callable[..., HttpFhirClient]) -> None:
    client = make_client()
    fhir.inject(status=503)
    with pytest.raises(RetryableError) as info:
        client.read("Patient", "anything")
    assert info.value.downstream_status == 503
    assert info.value.operation_outcome is not None


def test_timeout_is_retryable(fhir: Any, make_client: Callable[..., HttpFhirClient]) -> None:
    client = make_client(timeout=0.3)
    fhir.inject(delay_ms=1500)
    started = time.monotonic()
    with pytest.raises(RetryableError) as info:
        client.read("Patient", "anything")
    assert time.monotonic() - started < 1.2
    assert info.value.downstream_status is None
    assert "timed out" in str(info.value)


def test_token_for_the_wrong_audience_is_an_auth_error(make_client: Callable[..., HttpFhirClient]) -> None:
    client = make_client(scope="api://other/.default")
    with pytest.raises(AuthError) as info:
        client.read("Patient", "anything")
    assert info.value.downstream_status == 401


def test_structurally_invalid_resource_is_permanent_with_outcome(make_client: Callable[..., HttpFhirClient]) -> None:
    client = make_client()
    invalid = {"resourceType": "Patient", "name": "Jane Doe", "birthDate": "not-a-date", "unknownField": True}
    with pytest.raises(PermanentError) as info:
        client.create(invalid)
    err = info.value
    assert err.downstream_status in (400, 422)
    assert err.operation_outcome is not None
    assert err.operation_outcome["resourceType"] == "OperationOutcome"
    assert err.operation_outcome["issue"]
    assert "Jane" not in str(err)
    assert str(err).startswith("POST Patient: HTTP")


class CountingCredential:
    """Wraps the real ManagedIdentityCredential and counts the tokens asked of it."""

    def __init__(self, inner: ManagedIdentityCredential) -> None:
        self.inner = inner
        self.requests = 0
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        with self._lock:
            self.requests += 1
        token: AccessToken = self.inner.get_token(*scopes, **kwargs)
        return token


def test_tokens_are_reused_across_requests(fhir: Any, managed_identity_env: None) -> None:
    credential = CountingCredential(ManagedIdentityCredential())
    target = TargetConfig.model_validate(
        {"id": "local-ehr", "base_url": fhir.base_url, "auth": {"type": "managed_identity", "scope": SCOPE}}
    )
    client = HttpFhirClient(target, tokens=AzureIdentityTokenProvider(credential))
    created = client.create(PATIENT)
    assert created.resource is not None
    for _ in range(10):
        assert client.read("Patient", created.resource["id"]).status == 200
    assert credential.requests == 1
    assert fhir.stats()["byStatus"] == {"201": 1, "200": 10}
