"""The token cache over azure credentials, and the per-target factory."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from shared.adapters.identity import AzureIdentityTokenProvider, reset_token_providers, token_provider_for
from shared.core.errors import AuthError, ConfigurationError, RetryableError
from shared.core.targets import TargetConfig
from tests.support import ManualClock, from_threads

SCOPE = "api://local-ehr/.default"
START = 1_800_000_000.0


class IssuingCredential:
    """A credential double: issues token-1, token-2, ... each living ``lifetime`` seconds from the clock's now."""

    def __init__(self, clock: ManualClock[float], lifetime: float = 3600, delay: float = 0.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delay
        self.issued = 0
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        time.sleep(self.delay)
        with self._lock:
            self.issued += 1
            return AccessToken(f"{scopes[0]}#token-{self.issued}", int(self.clock() + self.lifetime))


class FailingCredential:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise self.exc


def test_token_is_cached_until_five_minutes_before_expiry() -> None:
    clock = ManualClock(START)
    provider = AzureIdentityTokenProvider(IssuingCredential(clock, lifetime=3600), clock=clock)
    first = provider.token(SCOPE)
    clock.now += 3600 - 301
    assert provider.token(SCOPE) == first
    clock.now += 2  # now 299 s before expiry
    second = provider.token(SCOPE)
    assert second != first
    assert second.endswith("token-2")


def test_tokens_are_cached_per_scope() -> None:
    clock = ManualClock(START)
    provider = AzureIdentityTokenProvider(IssuingCredential(clock), clock=clock)
    a = provider.token("api://a/.default")
    b = provider.token("api://b/.default")
    assert a.startswith("api://a/") and b.startswith("api://b/")
    assert provider.token("api://a/.default") == a
    assert provider.token("api://b/.default") == b


def test_short_lived_token_is_still_reused_for_half_its_life() -> None:
    clock = ManualClock(START)
    provider = AzureIdentityTokenProvider(IssuingCredential(clock, lifetime=240), clock=clock)
    first = provider.token(SCOPE)
    clock.now += 100
    assert provider.token(SCOPE) == first
    clock.now += 30  # past half of 240 s
    assert provider.token(SCOPE) != first


def test_invalidate_forces_a_new_token() -> None:
    clock = ManualClock(START)
    provider = AzureIdentityTokenProvider(IssuingCredential(clock), clock=clock)
    first = provider.token(SCOPE)
    provider.invalidate(SCOPE)
    assert provider.token(SCOPE) != first


def test_concurrent_callers_share_one_fetch() -> None:
    clock = ManualClock(START)
    credential = IssuingCredential(clock, delay=0.05)
    provider = AzureIdentityTokenProvider(credential, clock=clock)
    results = from_threads(lambda: provider.token(SCOPE), 16)
    assert len(results) == 16
    assert set(results) == {f"{SCOPE}#token-1"}


def test_authentication_failure_is_auth_error() -> None:
    provider = AzureIdentityTokenProvider(FailingCredential(ClientAuthenticationError("bad secret xyz")))
    with pytest.raises(AuthError) as info:
        provider.token(SCOPE)
    assert "xyz" not in str(info.value)


def test_network_failure_getting_a_token_is_retryable() -> None:
    provider = AzureIdentityTokenProvider(FailingCredential(ServiceRequestError("connection refused")))
    with pytest.raises(RetryableError):
        provider.token(SCOPE)


def _target(auth: dict[str, str]) -> TargetConfig:
    return TargetConfig.model_validate({"id": "ehr", "base_url": "http://127.0.0.1:1/fhir", "auth": auth})


def test_factory_none_auth_needs_no_tokens() -> None:
    assert token_provider_for(_target({"type": "none"}), managed_identity_client_id=None) is None


def test_factory_managed_identity_is_one_provider_per_process() -> None:
    reset_token_providers()
    try:
        target = _target({"type": "managed_identity", "scope": SCOPE})
        a = token_provider_for(target, managed_identity_client_id="client-1")
        b = token_provider_for(target, managed_identity_client_id="client-1")
        c = token_provider_for(target, managed_identity_client_id=None)
        assert a is not None and a is b
        assert c is not a
    finally:
        reset_token_providers()


def test_factory_smart_backend_services_needs_a_scope() -> None:
    target = _target(
        {
            "type": "smart_backend_services",
            "token_url": "https://ehr.example/token",
            "client_id": "app",
            "key_name": "ehr-key",
        }
    )
    with pytest.raises(ConfigurationError, match="needs 'scope'"):
        token_provider_for(target, managed_identity_client_id=None)
