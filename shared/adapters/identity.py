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

from shared.adapters.token_cache import ScopedTokenCache
from shared.core.errors import AuthError, ConfigurationError, RetryableError
from shared.core.targets import AuthKind, TargetConfig

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
        self._cache = ScopedTokenCache(refresh_margin=refresh_margin_seconds, clock=clock)

    def token(self, scope: str) -> str:
        def fetch() -> tuple[str, float]:
            access = self._fetch(scope)
            return access.token, float(access.expires_on)

        return self._cache.get(scope, fetch)

    def invalidate(self, scope: str | None = None) -> None:
        """Forget the cached token for ``scope`` (or all scopes), e.g. after the target answered 401."""
        self._cache.invalidate(scope)

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
