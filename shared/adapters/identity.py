"""Tokens for downstream calls: a cache over any ``azure.core`` credential, and the per-target factory.

In Azure the credential is the app's managed identity; locally the same ``ManagedIdentityCredential`` talks to a
local token endpoint (``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER``). Tokens are cached per scope and refreshed
shortly before they expire, so a burst of calls costs one token request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError

from shared.errors import AuthError, ConfigurationError, RetryableError
from shared.targets import AuthKind, TargetConfig

REFRESH_MARGIN_SECONDS = 300.0


class TokenProvider(Protocol):
    def token(self, scope: str) -> str:
        """A bearer token for ``scope``; raises AuthError when none can be had."""
        ...


class AzureIdentityTokenProvider:
    """Caches one token per scope until ``refresh_margin_seconds`` before it expires (thread-safe).

    A token that lives shorter than twice the margin is refreshed after half its lifetime instead, so short-lived
    tokens (some EHRs issue 5-minute tokens) are still reused rather than fetched on every call.
    """

    def __init__(
        self,
        credential: TokenCredential,
        *,
        refresh_margin_seconds: float = REFRESH_MARGIN_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self._margin = refresh_margin_seconds
        self._clock = clock
        # scope -> (token, refresh_at)
        self._cache: dict[str, tuple[AccessToken, float]] = {}
        self._lock = threading.Lock()
        self._scope_locks: dict[str, threading.Lock] = {}

    def token(self, scope: str) -> str:
        cached = self._fresh(scope)
        if cached is not None:
            return cached
        with self._scope_lock(scope):
            cached = self._fresh(scope)  # another thread may have fetched it while we waited
            if cached is not None:
                return cached
            fetched_at = self._clock()
            access = self._fetch(scope)
            lifetime = max(0.0, float(access.expires_on) - fetched_at)
            margin = min(self._margin, lifetime / 2)
            with self._lock:
                self._cache[scope] = (access, float(access.expires_on) - margin)
            return access.token

    def invalidate(self, scope: str | None = None) -> None:
        """Forget the cached token for ``scope`` (or all scopes), e.g. after the target answered 401."""
        with self._lock:
            if scope is None:
                self._cache.clear()
            else:
                self._cache.pop(scope, None)

    def _fresh(self, scope: str) -> str | None:
        with self._lock:
            entry = self._cache.get(scope)
        if entry is not None and self._clock() < entry[1]:
            return entry[0].token
        return None

    def _scope_lock(self, scope: str) -> threading.Lock:
        with self._lock:
            lock = self._scope_locks.get(scope)
            if lock is None:
                lock = self._scope_locks[scope] = threading.Lock()
            return lock

    def _fetch(self, scope: str) -> AccessToken:
        try:
            return self._credential.get_token(scope)
        except ClientAuthenticationError as exc:
            status = getattr(exc, "status_code", None)
            raise AuthError(
                detail=f"no token for scope {scope!r} ({type(exc).__name__})",
                downstream_status=status if isinstance(status, int) else None,
            ) from None
        except AzureError as exc:
            raise RetryableError(detail=f"token request for scope {scope!r} failed ({type(exc).__name__})") from None


_providers: dict[str | None, AzureIdentityTokenProvider] = {}
_providers_lock = threading.Lock()


def _managed_identity_provider(client_id: str | None) -> AzureIdentityTokenProvider:
    with _providers_lock:
        provider = _providers.get(client_id)
        if provider is None:
            from azure.identity import ManagedIdentityCredential

            provider = AzureIdentityTokenProvider(ManagedIdentityCredential(client_id=client_id))
            _providers[client_id] = provider
        return provider


def token_provider_for(target: TargetConfig, *, managed_identity_client_id: str | None) -> TokenProvider | None:
    """The token provider a target needs: None for ``none``; one shared managed-identity provider per client id."""
    kind = target.auth.type
    if kind is AuthKind.NONE:
        return None
    if kind is AuthKind.MANAGED_IDENTITY:
        return _managed_identity_provider(managed_identity_client_id or None)
    if kind is AuthKind.SMART_BACKEND_SERVICES:
        from shared.adapters.smart_backend import smart_provider_for  # lazy: key loading only where a target needs it

        return smart_provider_for(target, managed_identity_client_id=managed_identity_client_id or None)
    raise ConfigurationError(f"target {target.id!r}: unknown auth type {kind!r}")


def reset_token_providers() -> None:
    """Drop the process-wide providers (tests that change ``IDENTITY_ENDPOINT`` need a fresh credential)."""
    with _providers_lock:
        _providers.clear()
